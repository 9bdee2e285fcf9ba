"""tools/gpu_check.sh, the one command a session with a GPU runs: its arguments and its CPU dry run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "gpu_check.sh"


def _run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@pytest.mark.parametrize("args, message", [
    ((), "OUT_DIR is missing"),
    (("a", "b"), "expected one OUT_DIR"),
    (("--bogus",), "unknown option --bogus"),
])
def test_bad_arguments_exit_2_with_usage(args, message):
    result = _run(*args)
    assert result.returncode == 2, result
    assert message in result.stderr and "usage: tools/gpu_check.sh OUT_DIR [--dry-run]" in result.stderr


def test_help_exits_0():
    result = _run("--help")
    assert result.returncode == 0 and "usage:" in result.stderr


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = _run(str(target))
    assert result.returncode == 2 and "is not a directory" in result.stderr


def test_dry_run_lists_every_gpu_step_and_checks_its_files(tmp_path):
    """On this CPU machine (or with --dry-run) the GPU steps are skipped with the command they would
    run, the environment is recorded and every file the steps use must exist."""
    out = tmp_path / "gpu"
    result = _run(str(out), "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = (out / "summary.md").read_text()
    for name in ("build", "gpu-tests", "bench", "sanitize-memcheck", "sanitize-racecheck", "sanitize-synccheck"):
        assert f"| {name} | skipped (dry run): `" in summary, name
    assert "| files | all present |" in summary
    assert "setup.py build_ext --inplace" in summary and "compute-sanitizer --tool memcheck" in summary
    assert "bench/bench_triton.py --batches 1 64 --dims 1024 4096" in summary
    env = (out / "env.log").read_text()
    assert "\ntorch 2." in env and "\npython 3." in env, env
    assert not (out / "build.log").exists()  # nothing ran


def test_without_a_gpu_the_script_falls_back_to_a_dry_run(tmp_path):
    result = _run(str(tmp_path / "gpu"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no CUDA device visible" in result.stdout
    assert "Dry run: no GPU step ran." in (tmp_path / "gpu" / "summary.md").read_text()
