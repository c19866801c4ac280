"""benchmarks/gpu_check.sh, the one-call GPU check, in its dry run on the CPU: every step's command runs and is
recorded, and a step that fails is reported and fails the script without stopping the steps after it."""

import subprocess
import sys
import tarfile
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _check(tmp_path, *args, env_extra=None):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path), **(env_extra or {})}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_dry_run_records_each_step_and_bundles_the_logs(tmp_path):
    done = _check(tmp_path, "--steps", "install,tests")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary] == [["install", "exit=0"], ["tests", "exit=0"]]
    assert "tests/test_recurrent_cudnn.py::" in (tmp_path / "out" / "tests.log").read_text()
    with tarfile.open(tmp_path / "out" / "gpu_check.tgz") as bundle:
        names = {Path(name).name for name in bundle.getnames()}
    assert {"summary.txt", "install.log", "tests.log", "devices.txt"} <= names


def test_a_failing_step_fails_the_script_and_the_rest_still_run(tmp_path):
    done = _check(tmp_path, "--steps", "install,tests", env_extra={"CAP_INSTALL": "0.001"})
    assert done.returncode != 0
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "install exit=124" in summary and "tests exit=0" in summary


def test_an_unknown_step_is_refused_before_anything_runs(tmp_path):
    done = _check(tmp_path, "--steps", "tests,benchmark")
    assert done.returncode == 2
    assert "--steps holds benchmark, expected some of install,tests,bench,rnn,sweep,tour" in done.stderr
    assert not (tmp_path / "out").exists()
