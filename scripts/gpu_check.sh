#!/bin/bash
# GPU check (not run by CI; needs one CUDA GPU and the package installed, or wheels in .whl/ on a machine without
# network): training throughput and MFU on random-init 0.5B and 8B shapes, the tests that exercise generation,
# training, DPO and eval on CUDA (the test suite itself is CPU-only: on a GPU machine these tests take the CUDA
# paths), and `rational run --preset smoke` end to end. Results in BENCHMARKS.md "GPU".
#     bash scripts/gpu_check.sh            # writes runs/gpu_check/ (or $OUT)
set -o pipefail
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD/src
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, transformers, trl, peft; print(torch.__version__, transformers.__version__, trl.__version__, peft.__version__)" | tee -a "$OUT/env.txt"
s=$(date +%s)
timeout 300 python3 scripts/bench_train.py --gpu --steps 12 --batch 4 --seq 2048 --out "$OUT/bench_train_gpu.json" 2>&1 | tee "$OUT/bench.log" | grep '"mode"'
echo "bench rc=$? $(( $(date +%s)-s ))s"; s=$(date +%s)
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_backends.py tests/test_generate.py tests/test_train.py \
  tests/test_dpo.py tests/test_circuit_breakers.py tests/test_eval.py -k "not llamacpp" 2>&1 | tee "$OUT/pytest.log" | tail -3
echo "pytest rc=$? $(( $(date +%s)-s ))s"; s=$(date +%s)
timeout 200 python3 -m rational.cli run --preset smoke --out /tmp/gpu-smoke --overwrite > "$OUT/smoke.log" 2>&1
echo "smoke rc=$? $(( $(date +%s)-s ))s"
