"""The runner of CPython's multiprocessing suites (``mp_suites.py``) on one class, with mpwire."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("mp_suites.py")

pytest.importorskip("test._test_multiprocessing", reason="this Python has no test package")


@pytest.mark.timeout(180)
def test_runner_passes_a_class_with_mpwire_installed() -> None:
    done = subprocess.run(
        [sys.executable, str(RUNNER), "--method", "spawn", "--only", "WithProcessesTestQueue"],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Python" in done.stdout and ", mpwire" in done.stdout
    assert "spawn: 1/1 classes passed" in done.stdout


@pytest.mark.timeout(60)
def test_runner_reports_a_class_that_crashes() -> None:
    spec = importlib.util.spec_from_file_location("mp_suites", RUNNER)
    assert spec is not None and spec.loader is not None
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    outcome = runner.run_one("fork", "NoSuchClass", False, 50)
    assert outcome["outcome"].startswith("crashed")
    assert "NoSuchClass" in outcome["log"]
