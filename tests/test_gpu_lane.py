"""The GPU lane's CPU side, in every CI run: scripts/gpu_check.sh runs the `gpu` tests
and the kernel benchmark end to end on the CPU (Triton's interpreter), and the `gpu`
marker selects exactly tests/gpu/, which `make test` leaves to the lane."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def test_the_lane_script_runs_its_tests_and_benchmark_on_the_cpu(tmp_path):
    env = {**os.environ, "ENTROPY_SERVE_TEST_DEVICE": "cpu", "TRITON_INTERPRET": "1", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    suite = ElementTree.parse(tmp_path / "tests.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 10 and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert suite.get("skipped") == "0"
    assert (tmp_path / "entropy_kernel.json").is_file()
    assert (tmp_path / "summary.txt").read_text().strip() == "tests exit 0, benchmark exit 0"


def test_the_lane_script_fails_when_a_test_fails(tmp_path):
    env = {**os.environ, "ENTROPY_SERVE_TEST_DEVICE": "no-such-device", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode != 0


def collected(marker: str) -> set[str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-m",
            marker,
            "-p",
            "no:cacheprovider",
            "tests/gpu",
            "tests/test_host.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    return {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}


def test_the_gpu_marker_selects_the_gpu_tests_and_only_them():
    assert collected("gpu") == {"tests/gpu/test_cuda.py"}
    assert collected("not gpu") == {"tests/test_host.py"}
