"""Every command in the README runs as written: each `dlp ...` line parses with the real command-line parser (every
flag and value exists), each command's `--help` works, the benchmark scripts answer `--help`, and the Python API
example runs (on tiny inputs)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dlp.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
# Commands that need a network, root or a long run; what they do is tested elsewhere (`make test` is this suite).
NOT_RUN = ("pip ", "make ", "accelerate ")


def fenced(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def shell_commands() -> list[str]:
    commands = []
    for block in fenced("bash"):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = shell_commands()
DLP_COMMANDS = [c for c in COMMANDS if c.startswith("dlp ")]


def test_readme_is_short_and_every_command_is_known():
    assert len(README.splitlines()) <= 250
    assert DLP_COMMANDS and all(c.startswith(("dlp ", "python ", *NOT_RUN)) for c in COMMANDS), COMMANDS


@pytest.mark.parametrize("command", DLP_COMMANDS)
def test_dlp_command_parses(command):
    argv = shlex.split(command)[1:]
    args = build_parser(argv).parse_args(argv)  # exits (SystemExit) on an unknown flag or a bad value
    assert hasattr(args, "func")


@pytest.mark.parametrize("command", sorted({c.split()[1] for c in DLP_COMMANDS}))
def test_dlp_command_help(command, capsys):
    argv = [command, "clevrer", "--help"] if command == "prepare" else [command, "--help"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0 and "usage: dlp" in capsys.readouterr().out


@pytest.mark.parametrize("script", sorted({c.split()[1] for c in COMMANDS if c.startswith("python ")}))
def test_benchmark_scripts_answer_help(script):
    result = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


def test_python_api_example_runs():
    (code,) = fenced("python")
    code = code.replace('"model.pt"', 'str(tmp / "model.pt")').replace('"my-model"', 'str(tmp / "my-model")')
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        exec(compile(code, "README.md", "exec"), {"tmp": Path(folder)})  # noqa: S102 - our own README
