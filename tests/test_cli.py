import subprocess
import sys

import pytest

from rational.cli import main


def _run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_chat_tiny_random_once(capsys):
    try:
        main(["chat", "--model", "tiny-random", "--prompt", "hello", "--max-new-tokens", "8"])
    except SystemExit as e:  # typer may exit 0 explicitly
        assert e.code in (0, None)
    assert "answer" in capsys.readouterr().out


@pytest.mark.parametrize("args,needle", [
    (["chat", "--model", "no-such-model", "--prompt", "x"], "unknown model spec 'no-such-model'"),
    (["chat", "--model", "/no/such/dir", "--prompt", "x"], "/no/such/dir: path not found"),
    (["chat", "--model", "tiny-random", "--adapter", "/no/adapter", "--prompt", "x"], "not a PEFT adapter"),
])
def test_user_errors_are_one_line(capsys, args, needle):
    code, out, err = _run(args, capsys)
    assert code == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_models_lists_registry(capsys):
    try:
        main(["models"])
    except SystemExit as e:
        assert e.code in (0, None)
    out = capsys.readouterr().out
    for name in ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct", "tiny-random"):
        assert name in out


def test_console_script_help_is_fast_and_light():
    # `rational --help` must not import torch (stage modules import heavy libraries lazily).
    code = "import sys; import rational.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
