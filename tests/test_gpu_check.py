"""The prepared GPU check: without a CUDA device it stops at once with "no CUDA device" and exit 2, and
writes nothing; `gpu` tests fail (never pass) when no GPU is visible."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_without_cuda_stops_with_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path / "gpu_check")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("gpu-check: no CUDA device") and "Traceback" not in proc.stderr
    assert not (tmp_path / "gpu_check").exists()


def test_gpu_tests_are_deselected_by_default_and_fail_without_a_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "DABNET_GPU_TESTS": "", "PYTHONPATH": str(REPO)}
    default = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_gpu.py", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert default.returncode == 5 and "deselected" in default.stdout  # 5: no test collected/run
    forced = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-m",
            "gpu",
            "-p",
            "no:cacheprovider",
            "tests/test_gpu.py::test_ohem_on_cuda_keeps_the_same_pixels_as_on_cpu",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert forced.returncode == 1 and "needs a CUDA device" in forced.stdout and " passed" not in forced.stdout
