"""The command line, driven as a user would: in a subprocess."""

from __future__ import annotations

import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpwire", *args], capture_output=True, text=True, timeout=60
    )


def test_demo_prints_what_each_side_prints() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "[client] [2.25, None, 'junk', <class 'float'>]" in lines
    assert "[client] b'hello'" in lines
    assert "[client] 8" in lines
    assert "[client] array('i', [42, 1729, 0, 0, 0])" in lines
    assert any(line.startswith("[listener] connection accepted from :") for line in lines)
    from_children = [line for line in lines if line.startswith("[parent] (")]
    assert len(from_children) == 40


def test_help_and_missing_command() -> None:
    assert "demo" in run("--help").stdout
    result = run()
    assert result.returncode == 2
    assert "usage: mpwire" in result.stdout
