"""scripts/gpu_check.sh, the one-command GPU check (issue 18), tested through its dry run: every step's CPU
side, the summary table, the logs, and that a failing or hanging step makes the script fail.

The dry run takes about a minute on 2 cores (most of it `gpuconv info` compiling every kernel with NVRTC);
it runs once per session and the tests below read what it left.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"
RESULTS = REPO / "bench" / "results"
STEPS = ["env", "gpu_tests", "other_gpu_tests", "kernel_startup", "train", "tune", "bench", "memcheck",
         "racecheck"]
ROW = re.compile(r"^(?P<step>\S+) +(?P<status>PASS|FAIL|TIMEOUT|SKIP) +(?P<seconds>[\d.]+)  (?P<log>\S+) *"
                 r"(?P<result>.*)$")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run_script(out_dir: Path, *args, timeout=400, **env):
    """bash scripts/gpu_check.sh --dry-run [args] OUT_DIR with this interpreter as PYTHON, plus env."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    environment.update({"PYTHON": sys.executable, **env})
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args, str(out_dir)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def summary_rows(text: str) -> dict:
    """{step: match} from the summary table, which follows its 'step status seconds log result' header."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if re.match(r"^step +status +seconds +log +result$", line))
    rows = {}
    for line in lines[header + 1:]:
        match = ROW.match(line)
        if match:
            rows[match["step"]] = match
    return rows


def results_listing():
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in RESULTS.iterdir()) \
        if RESULTS.is_dir() else []


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gpu_check")
    before = results_listing()
    done = run_script(out_dir)
    return done, out_dir, before, results_listing()


@pytest.mark.slow
def test_dry_run_passes_and_summarises_every_step(dry_run):
    done, out_dir, _, _ = dry_run
    assert done.returncode == 0, done.stdout + done.stderr
    rows = summary_rows(done.stdout)
    assert list(rows) == STEPS + ["total"], done.stdout
    expected = {step: "PASS" for step in STEPS} | {"memcheck": "SKIP", "racecheck": "SKIP"}
    assert {step: rows[step]["status"] for step in STEPS} == expected, done.stdout
    assert rows["total"]["status"] == "PASS"
    for step in STEPS:
        assert rows[step]["log"] == f"{step}.log" and (out_dir / f"{step}.log").is_file()
    # The same table is kept beside the logs.
    assert summary_rows((out_dir / "summary.txt").read_text()).keys() == rows.keys()
    assert "dry run: not run" in rows["memcheck"]["result"]


@pytest.mark.slow
def test_dry_run_logs_hold_each_steps_result(dry_run):
    done, out_dir, _, _ = dry_run
    log = {step: (out_dir / f"{step}.log").read_text() for step in STEPS}
    assert "nvidia-smi: skipped (dry run)" in log["env"]
    assert "CUDA usable:" in log["env"] and re.search(r"^  \S+\.cu +ok \(", log["env"], re.M), log["env"]
    assert re.search(r"^cudnn ", log["env"], re.M)
    # The GPU selection collects (and skips here); the emulated kernel tests really run and pass.
    emulated = (out_dir / "gpu_tests-emulated.xml").read_text()
    assert re.search(r'tests="[1-9]\d*"', emulated) and 'failures="0"' in emulated and 'errors="0"' in emulated
    assert re.search(r"^\d+ passed", summary_rows(done.stdout)["gpu_tests"]["result"])
    assert (out_dir / "gpu_tests.xml").is_file() and (out_dir / "other_gpu_tests.xml").is_file()
    assert re.search(r"^RESULT warm startup_s=[\d.]+ first_call_s=[\d.]+ new_cache_files=0$", log["kernel_startup"],
                     re.M), log["kernel_startup"]
    assert re.search(r"^test accuracy [\d.]+% on 360 images \| [\d.]+ s/epoch on cpu", log["train"], re.M)
    assert len(re.findall(r"^epoch +\d+/2 ", log["train"], re.M)) == 2
    assert log["tune"].count("CUDA requested but unavailable") == 2
    assert re.search(r"^[1-9]\d*/\d+ tests collected", log["memcheck"], re.M)


@pytest.mark.slow
def test_dry_run_benchmark_writes_to_out_dir_only(dry_run):
    done, out_dir, before, after = dry_run
    assert after == before, "the dry run wrote into bench/results/"
    result = json.loads((out_dir / "bench" / "cpu_dry_run.json").read_text())
    assert result["device_kind"] == "cpu" and result["suites"] == ["small_cnn", "resnet50"]
    assert {r["layer"] for r in result["records"]} == {"conv1", "conv2"}
    assert result["records"] and not any(r["error"] for r in result["records"])
    assert (out_dir / "bench" / "cpu_dry_run.md").is_file()
    # CuPy's compiled kernels are not left in OUT_DIR.
    assert not (out_dir / "cache" / "cupy").exists()


def test_a_failing_step_fails_the_script(tmp_path):
    # PYTHON=false: every Python command of the step fails, as a broken install would.
    done = run_script(tmp_path, timeout=60, PYTHON="false", GPU_CHECK_ONLY="train")
    assert done.returncode == 1, done.stdout + done.stderr
    rows = summary_rows(done.stdout)
    assert rows["train"]["status"] == "FAIL" and rows["total"]["status"] == "FAIL"
    assert all(rows[step]["status"] == "SKIP" for step in STEPS if step != "train")
    assert "no 'test accuracy' line" in rows["train"]["result"]
    assert "gpu_check: FAIL:" in (tmp_path / "train.log").read_text()


def test_a_hanging_step_times_out_and_the_next_step_still_runs(tmp_path):
    # A PYTHON that hangs in `gpuconv train` only, and is this interpreter otherwise.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\ncase "$*" in *"gpuconv.cli train"*) exec sleep 60 ;; esac\n'
                      f'exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    out_dir = tmp_path / "out"
    done = run_script(out_dir, timeout=60, PYTHON=str(python), GPU_CHECK_ONLY="train,tune",
                      GPU_CHECK_BUDGET_train="2")
    assert done.returncode == 1, done.stdout + done.stderr
    rows = summary_rows(done.stdout)
    assert rows["train"]["status"] == "TIMEOUT" and float(rows["train"]["seconds"]) < 15, done.stdout
    assert "TIMEOUT" in (out_dir / "train.log").read_text()
    assert rows["tune"]["status"] == "PASS" and rows["total"]["status"] == "FAIL", done.stdout


def test_unknown_step_names_are_refused(tmp_path):
    done = run_script(tmp_path, timeout=30, GPU_CHECK_ONLY="env,no_such_step")
    assert done.returncode == 2 and "no_such_step" in done.stderr
