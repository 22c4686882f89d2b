"""The `dlp` command itself: fast help without torch, every command reachable, consistent defaults."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dlp.cli import COMMANDS, main


def test_help_does_not_import_torch_accelerate_or_matplotlib():
    code = ("import sys, contextlib, io\n"
            "from dlp.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'accelerate', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_help_is_fast():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dlp", "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0 and all(name in result.stdout for name in COMMANDS)
    assert elapsed < 5.0  # ~0.1 s on a quiet 2-core machine; generous for a loaded CI runner


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_its_help(command, capsys):
    argv = [command, "clevrer", "--help"] if command == "prepare" else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: dlp" in capsys.readouterr().out


def test_eval_and_train_share_the_device_default(capsys):
    for command in ("train", "eval", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        flat = " ".join(capsys.readouterr().out.split())
        assert "auto" in flat.rsplit("--device", 1)[1][:120], command
