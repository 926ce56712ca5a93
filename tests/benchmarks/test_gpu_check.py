"""The GPU acceptance check's verdicts (benchmarks/gpu_check_run.py report), on made-up run records: what it must
call a failure. The whole script is rehearsed on CPU with `SMOKE=1 bash benchmarks/gpu_check.sh` (minutes: not in
CI)."""

import json
import os
import subprocess
from pathlib import Path

import gpu_check_run
import pytest
from conftest import REPO

PLAIN = {
    "model": "m",
    "launcher": "single",
    "mode": "plain",
    "status": "ok",
    "expect_fused": False,
    "expect_layout": "plain",
    "losses": [1.30, 1.2],
    "first_loss": 1.30,
    "tiled_calls": 0,
    "loss_calls": 2,
    "layout": "plain",
    "num_processes": 1,
    "device": "NVIDIA H200",
    "params": 10**9,
    "tokens_per_s": 1000.0,
}


def write_runs(results: Path, runs: dict[str, list[dict]], statuses: dict[str, str] | None = None) -> None:
    """runs: {launch name (model__launcher__modes): its records}; the shell's status file of each launch."""
    for launch, records in runs.items():
        (results / f"{launch}.status").write_text((statuses or {}).get(launch, "ok") + "\n")
        for record in records:
            (results / f"{record['model']}__{record['launcher']}__{record['mode']}.json").write_text(json.dumps(record))


def verdicts(tmp_path, default: dict, statuses=None, allow_skipped=False) -> tuple[dict, int]:
    write_runs(tmp_path, {"m__single__plain,default": [PLAIN, default]}, statuses)
    code = gpu_check_run.report(tmp_path, str(tmp_path / "report"), allow_skipped)
    runs = json.loads((tmp_path / "report.json").read_text())["runs"]
    return {r["mode"]: r["verdict"] for r in runs}, code


def default(**changes) -> dict:
    return {
        **PLAIN,
        "mode": "default",
        "expect_fused": True,
        "expect_layout": "prefix sharing",
        "tiled_calls": 2,
        "layout": "prefix sharing (FlexAttention block masks)",
        **changes,
    }


def test_a_run_that_matches_the_plain_path_without_falling_back_is_ok(tmp_path):
    assert verdicts(tmp_path, default(first_loss=1.31)) == ({"plain": "ok", "default": "ok"}, 0)
    report = (tmp_path / "report.md").read_text()
    assert "| m | single | default | ok | 1.3100 | 2/2 |" in report and "| 0.6% |" in report  # MFU 6e12/989e12


def test_what_fails_the_check(tmp_path):
    cases = {
        "failed: fused log-probs ran at 1 of 2 steps": default(tiled_calls=1),
        "failed: layout 'plain', expected 'prefix sharing'": default(layout="plain"),
        "failed: first loss 0.05 from the plain path's": default(first_loss=1.35),
        "failed: non-finite or missing losses": default(losses=[1.3, float("nan")]),
    }
    for expected, record in cases.items():
        for path in tmp_path.glob("*"):
            path.unlink()
        got, code = verdicts(tmp_path, record)
        assert got["default"] == expected and code == 1


def test_a_launch_that_wrote_nothing_fails_with_its_log(tmp_path):
    write_runs(
        tmp_path, {"m__single__plain": [PLAIN], "m__zero3__default": []}, {"m__zero3__default": "failed: exit 1"}
    )
    (tmp_path / "m__zero3__default.log").write_text("...\nRuntimeError: NCCL error\n")
    assert gpu_check_run.report(tmp_path, str(tmp_path / "report")) == 1
    zero3 = json.loads((tmp_path / "report.json").read_text())["runs"][-1]
    assert zero3["verdict"] == "failed: exit 1" and zero3["error"] == "RuntimeError: NCCL error"


def test_skipped_runs_pass_only_in_the_rehearsal(tmp_path):
    write_runs(
        tmp_path,
        {"m__single__plain": [PLAIN], "m__fsdp2__default": []},
        {"m__fsdp2__default": "skipped: FSDP2 runs on GPUs only"},
    )
    assert gpu_check_run.report(tmp_path, str(tmp_path / "a")) == 1
    assert gpu_check_run.report(tmp_path, str(tmp_path / "b"), allow_skipped=True) == 0


@pytest.mark.parametrize("script", ["gpu_check.sh", "device_run.sh"])
def test_the_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(Path(REPO) / "benchmarks" / script)]).returncode == 0


def test_the_device_command_needs_the_folder_that_comes_back():
    done = subprocess.run(
        ["bash", str(Path(REPO) / "benchmarks" / "device_run.sh")],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "OUT"},
    )
    assert done.returncode != 0 and "OUT must name the folder whose files come back" in done.stderr
