"""Nothing runs that should not, nothing lies about what it is: sandboxed templates, honest reruns, clean failures.

Every case here once ended in code execution, a silently wrong result, exit 0 on Ctrl-C, or a traceback.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_eval import ROWS, ScriptedModel, _prompts

from rational import models
from rational.cli import main
from rational.common import output_lock, read_jsonl
from rational.errors import UserError
from rational.eval import EvalConfig, run_eval
from rational.prompts import load_templates


def _cli(args, capsys):
    """Run the CLI; returns (exit code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code, err, needle):
    assert code == 2, err
    assert needle in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------------ templates


@pytest.mark.parametrize("payload", [
    "{{ cycler.__init__.__globals__.os.system('touch MARK') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self.__init__.__globals__['__builtins__']['open']('MARK', 'w') }}",
    "{{ lipsum.__globals__['os'].system('touch MARK') }}",
    "{% set x = namespace() %}{{ x.__class__.__init__.__globals__ }}",
])
def test_templates_never_run_code(tmp_path, payload):
    mark = tmp_path / "MARK"
    (tmp_path / "t.yaml").write_text(f"name: evil\nvalue: \"{payload.replace('MARK', str(mark))} {{{{ prompt }}}}\"\n")
    try:
        load_templates(tmp_path / "t.yaml")
    except UserError as e:
        assert "t.yaml" in str(e)
    assert not mark.exists()


def test_evil_template_in_the_data_folder_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "data" / "jailbreak_templates" / "in_the_wild_pyrit"
    folder.mkdir(parents=True)
    mark = tmp_path / "pwned"
    (folder / "evil.yaml").write_text("name: evil\nvalue: \"{{ cycler.__init__.__globals__.os.system('touch "
                                      f"{mark}') }} {{{{ prompt }}}}\"\n")
    (tmp_path / "data" / "jailbreak_templates" / "templates_curated.json").write_text("[]")
    monkeypatch.setenv("RATIONAL_DATA", str(tmp_path / "data"))
    code, _, err = _cli(["run", "--preset", "smoke", "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and "evil.yaml" in err and "Traceback" not in err
    assert not mark.exists()


# ------------------------------------------------------------------------------------------ honest reruns


def test_run_again_with_another_seed_or_model_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "smoke"
    assert _cli(["run", "--preset", "smoke", "--out", str(out)], capsys)[0] == 0
    # The same folder spelled relatively is the same run: every stage is skipped, nothing is refused.
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(["run", "--preset", "smoke", "--out", "smoke"], capsys)
    assert code == 0 and "was made with" not in err and "stage 2/" in err and "generate: done earlier" in err
    meta = (out / "run.json").read_text()
    code, _, err = _cli(["run", "--preset", "smoke", "--out", str(out), "--seed", "1"], capsys)
    assert code == 2 and "stage data was made with seed=0, not 1" in err and "--overwrite" in err
    assert (out / "run.json").read_text() == meta  # nothing claims the new seed
    code, _, err = _cli(["run", "--preset", "smoke", "--out", str(out), "train.lora_alpha=8"], capsys)
    assert code == 2 and "stage train-rational was made with lora_alpha=32, not 8" in err
    assert _cli(["run", "--preset", "smoke", "--out", str(out), "--seed", "1", "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "run.json").read_text())["seed"] == 1
    assert json.loads((out / "data" / ".done.json").read_text())["fingerprint"]["seed"] == 1


def test_eval_rerun_at_another_token_limit_is_refused_and_limits_are_per_row(tmp_path):
    out = tmp_path / "e"
    run_eval(EvalConfig(model="m", suites=["smoke"], out=str(out)), generator=ScriptedModel(), progress=False)
    rows = read_jsonl(out / "generations.jsonl")
    assert {r["max_new_tokens"] for r in rows} == {32}
    assert json.loads((out / "metrics.json").read_text())["generation"]["max_new_tokens"] == 32
    # Adding a prompts file changes the default limit (32 for smoke alone, 512 otherwise): refused, not mixed.
    with pytest.raises(UserError, match="max_new_tokens=32 \\(now 512\\)"):
        run_eval(EvalConfig(model="m", suites=["smoke"], prompts=_prompts(tmp_path), out=str(out)),
                 generator=ScriptedModel(), progress=False)


def test_two_processes_never_write_one_output_folder(tmp_path, capsys):
    out = tmp_path / "e"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom rational.common import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = _cli(["eval", "--model", "tiny-random", "--suites", "smoke", "--out", str(out)], capsys)
        _one_line_error(code, err, f"another rational process (pid {holder.pid}) is writing here")
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # released when the holder died: no stale lock
        pass


def test_broken_last_line_of_a_prompts_file_is_an_error(tmp_path, capsys):
    path = Path(_prompts(tmp_path))
    path.write_text(path.read_text() + '{"id": "x9", "prompt": "cut off')
    code, _, err = _cli(["eval", "--model", "tiny-random", "--prompts", str(path), "--out", str(tmp_path / "e")],
                        capsys)
    _one_line_error(code, err, f"{path}:{len(ROWS) + 1}: not valid JSON")


class FlakyJudge:
    """A refusal judge whose backend is down for the first `down` calls (every verdict is an error then)."""

    name, gives_refusal, gives_harm = "flaky", True, False

    def __init__(self, down):
        self.down, self.calls = down, 0

    def judge_batch(self, pairs):
        from rational.judges import Verdict

        self.calls += 1
        if self.calls <= self.down:
            return [Verdict(self.name, None, fields={"error": "ConnectionError: endpoint down"}) for _ in pairs]
        return [Verdict(self.name, "compliance", refused=False) for _ in pairs]


def test_a_failing_judge_is_an_error_and_its_rows_are_judged_again(tmp_path, monkeypatch):
    from rational import eval as ev

    judge = FlakyJudge(down=1)
    real_build = ev.JudgePanel.build
    monkeypatch.setattr(ev.JudgePanel, "build", classmethod(lambda cls, specs: cls([judge], judge, None)))
    cfg = EvalConfig(model="m", prompts=_prompts(tmp_path), out=str(tmp_path / "e"))
    model = ScriptedModel()
    with pytest.raises(UserError, match=r"judge flaky failed on (\d+) of \1 rows .*endpoint down.*answers are saved"):
        run_eval(cfg, generator=model, progress=False)
    assert len(read_jsonl(tmp_path / "e" / "generations.jsonl")) == len(ROWS)
    model2 = ScriptedModel()
    run_eval(cfg, generator=model2, progress=False)  # the judge is back: only judging is redone
    assert model2.seen == []
    rows = read_jsonl(tmp_path / "e" / "generations.jsonl")
    judged = [r["verdicts"]["flaky"] for r in rows if "flaky" in r["verdicts"]]
    assert len(judged) >= 4 and all(v["label"] == "compliance" for v in judged)
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["suites"]["custom"]["metrics"]["compliance"]["unjudged"] == 0
    monkeypatch.setattr(ev.JudgePanel, "build", real_build)


def test_a_judge_model_that_does_not_exist_fails_before_generating(tmp_path, capsys):
    code, _, err = _cli(["eval", "--model", "tiny-random", "--suites", "smoke", "--judge", "xstest@nosuch-model",
                         "--out", str(tmp_path / "e")], capsys)
    _one_line_error(code, err, "unknown model spec 'nosuch-model'")
    assert not (tmp_path / "e" / "generations.jsonl").exists()


@pytest.mark.parametrize("value, needle", [(["--max-steps", "0"], "'max_steps' is 0"),
                                           (["--epochs", "-3"], "'epochs' is -3")])
def test_zero_step_training_is_refused(tmp_path, capsys, value, needle):
    code, _, err = _cli(["train", "--model", "tiny-random", "--data", str(tmp_path / "x.jsonl"), "--out",
                         str(tmp_path / "t")] + value, capsys)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "t" / "adapter").exists()


def test_a_mistyped_model_does_not_block_the_corrected_retry(tmp_path, capsys):
    out = tmp_path / "e"
    code, _, err = _cli(["eval", "--model", "qwen-typo", "--suites", "smoke", "--out", str(out)], capsys)
    _one_line_error(code, err, "unknown model spec 'qwen-typo'")
    code, _, err = _cli(["eval", "--model", "tiny-random", "--suites", "smoke", "--out", str(out),
                         "--max-new-tokens", "2"], capsys)
    assert code == 0, err


# ------------------------------------------------------------------------------------------ CLI errors


def test_ctrl_c_exits_130_with_a_message():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # The child gets the default SIGINT disposition: an ignored SIGINT is inherited across exec, and Python then
    # installs no KeyboardInterrupt handler (earlier tests in this process may leave SIGINT ignored).
    proc = subprocess.Popen([sys.executable, "-m", "rational.cli", "chat", "--model", "tiny-random"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        line = ""
        while "Interactive chat" not in line and time.time() < deadline:
            line = proc.stderr.readline()
        prompt = ""
        while not prompt.endswith("you> ") and time.time() < deadline:  # input() has printed its prompt
            prompt += proc.stdout.read(1)
        time.sleep(0.5)  # blocked in input()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted; run the same command again to resume" in err and "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["eval", "--limit", "abc"], "Invalid value for '--limit'"),
    (["eval", "--no-such-flag"], "No such option: --no-such-flag"),
    (["report"], "Missing argument"),
    (["eval", "--model", "tiny-random"], "nothing to evaluate: pass --suites"),
    (["eval", "--model", "tiny-random", "--suites", "smoke", "--max-new-tokens", "0"], "'max_new_tokens' is 0"),
])
def test_usage_errors_are_one_line(capsys, args, needle):
    code, _, err = _cli(args, capsys)
    _one_line_error(code, err, needle)


@pytest.mark.parametrize("recipe, needle", [
    ("train:\n  learning_rate: -0.5\n", "'learning_rate' is -0.5"),
    ("train:\n  lora_dropout: 7\n", "'lora_dropout' is 7"),
    ("eval:\n  suites: 5\n", "'suites' has value 5"),
    ("train: [1, 2]\n", "section 'train' must be a mapping"),
])
def test_bad_recipe_values_are_one_line(tmp_path, capsys, recipe, needle):
    (tmp_path / "r.yaml").write_text(recipe)
    stage = "eval" if "eval" in recipe else "train"
    extra = ["--suites", "smoke"] if stage == "eval" and "suites" not in recipe else []
    code, _, err = _cli([stage, "--config", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")] + extra, capsys)
    _one_line_error(code, err, needle)


@pytest.mark.parametrize("content, needle", [
    (b"\xff\xfe\x00binary\x00", "not UTF-8 text"),
    ("id,prompt\n1,caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
    (b'{"id": "a", "prompt": "\\ud800 lone", "kind": "harmful", "category": "", "attack": null}\n',
     "lone UTF-16 surrogate"),
    (b'{"id": "a", "prompt": "hi", "kind": "harmful", "category": "", "attack": 7}\n', "column 'attack' is 7"),
])
def test_unreadable_prompt_files_are_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    code, _, err = _cli(["eval", "--model", "tiny-random", "--prompts", str(path), "--out", str(tmp_path / "e")],
                        capsys)
    _one_line_error(code, err, needle)


def test_unreadable_training_data_is_one_line(tmp_path, capsys):
    path = tmp_path / "sft.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code, _, err = _cli(["train", "--model", "tiny-random", "--data", str(path), "--out", str(tmp_path / "t")], capsys)
    _one_line_error(code, err, "not UTF-8 text")


def test_out_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = _cli(["eval", "--model", "tiny-random", "--suites", "smoke", "--out", str(blocker)], capsys)
    _one_line_error(code, err, f"{blocker}: cannot write there")
    code, _, err = _cli(["report", str(tmp_path), "--out", str(tmp_path)], capsys)
    _one_line_error(code, err, "is a folder")
    assert not list(tmp_path.glob("*.tmp"))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "e" / "metrics.json"))

    monkeypatch.setattr("rational.eval.write_json", full)
    code, _, err = _cli(["eval", "--model", "tiny-random", "--suites", "smoke", "--out", str(tmp_path / "e"),
                         "--max-new-tokens", "2"], capsys)
    _one_line_error(code, err, "metrics.json: disk full")


def test_unwritable_model_cache_is_one_line(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    monkeypatch.setenv("RATIONAL_CACHE", str(blocker / "cache"))
    code, _, err = _cli(["chat", "--model", "tiny-random", "--prompt", "hi"], capsys)
    _one_line_error(code, err, "model cache")


# ------------------------------------------------------------------------------------------ integrity


def test_converted_model_folder_is_checked_and_reconverted(tmp_path, monkeypatch, tiny_path):
    import shutil

    monkeypatch.setenv("RATIONAL_CACHE", str(tmp_path / "cache"))
    entry = models.ModelEntry("fake-gguf-model", None, "test", "MIT",
                              models.OfflineSource((models.WheelPart("x", "1", "m"),), "fake.gguf", "0" * 64))
    monkeypatch.setitem(models.REGISTRY, entry.name, entry)
    converted = []

    def fake_fetch(e, progress=True):
        return tmp_path / "fake.gguf"

    def fake_convert(gguf, out):  # what convert_gguf writes: a model folder and its checksum manifest
        if models.folder_intact(out):
            return out
        converted.append(out)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(tiny_path, out)
        models._write_manifest(out)
        return out

    monkeypatch.setattr(models, "fetch_offline", fake_fetch)
    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    folder = Path(models.resolve(entry.name).path)
    assert len(converted) == 1 and models.folder_intact(folder)
    models.resolve(entry.name)
    assert len(converted) == 1  # intact: used as is
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte, same size (mtime kept too)
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    models._INTACT.clear()  # a new process
    assert not models.folder_intact(folder)
    models.resolve(entry.name)
    assert len(converted) == 2 and models.folder_intact(folder)


def test_bfloat16_loads_of_a_converted_model_use_a_bfloat16_copy(tmp_path, monkeypatch, tiny_path):
    import shutil

    import torch
    from safetensors import safe_open

    folder = tmp_path / "m" / "hf"
    shutil.copytree(tiny_path, folder)
    models._write_manifest(folder)  # a folder convert_gguf wrote: float32, with its manifest
    resolved = models.ResolvedModel("some-registry-model", str(folder), "registry", "m")
    saves = []
    save = models.bf16_copy

    def spy(f):
        saves.append(models.folder_intact(f.with_name(f.name + "-bfloat16")))
        return save(f)

    monkeypatch.setattr(models, "bf16_copy", spy)
    fast = models.load_model(resolved, dtype="bfloat16", device="cpu")
    copy = folder.with_name("hf-bfloat16")
    assert models.folder_intact(copy) and saves == [False]
    with safe_open(str(copy / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118 (not a dict)
    assert (copy / "model.safetensors").stat().st_size < 0.6 * (folder / "model.safetensors").stat().st_size
    cast = transformers_load(folder, torch.bfloat16)  # what loading the float32 folder as bfloat16 gives
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), cast.state_dict().values()))
    models.load_model(resolved, dtype="bfloat16", device="cpu")
    assert saves == [False, True]  # made once, then reused
    assert models.load_model(resolved, dtype="float32", device="cpu").dtype == torch.float32  # float32: the original
    assert len(saves) == 2


def transformers_load(folder, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)


def test_a_modified_gguf_with_the_same_size_and_mtime_fails_verification(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 100)
    digest = models.sha256_file(path)
    assert models._verified(path, digest)
    stat = path.stat()
    path.write_bytes(b"GGUF" + b"\x01" + b"\x00" * 99)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not models._verified(path, digest)


def test_prompts_longer_than_the_context_are_refused_or_truncated_and_counted(tmp_path, capsys):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"id": "l1", "prompt": "word " * 3000, "kind": "benign", "category": "",
                                "attack": None}) + "\n")
    code, _, err = _cli(["eval", "--model", "tiny-random", "--prompts", str(long), "--out", str(tmp_path / "e"),
                         "--max-new-tokens", "4"], capsys)
    _one_line_error(code, err, "prompt custom/l1 has")
    code, _, err = _cli(["eval", "--model", "tiny-random", "--prompts", str(long), "--out", str(tmp_path / "e2"),
                         "--max-new-tokens", "4", "eval.long_prompts=truncate"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert m["generation"]["prompts_truncated"] == 1
    assert read_jsonl(tmp_path / "e2" / "generations.jsonl")[0]["prompt_truncated"] is True
