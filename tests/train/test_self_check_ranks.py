"""The start-up self-check in 2 gloo processes (tests/helpers/self_check_ranks.py): a kernel wrong on rank 1 alone is
rejected on both ranks, and layouts timed differently on each rank give one choice, the one the slower rank times
fastest; both ranks then train the same layout in step (DDP) or through ZeRO-3 (whose check compares the log-probs
alone: a backward there would reduce into the optimizer's partitions)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # each launch starts 2 processes


@pytest.mark.parametrize(
    "config,gradients",
    [
        ("accelerate_configs/ddp_cpu.yaml", "gradients compared"),
        ("accelerate_configs/deepspeed_zero3_cpu.yaml", "log-probs only: under DeepSpeed"),
    ],
    ids=["ddp", "zero3"],
)
def test_two_processes_end_with_one_choice(tmp_path, config, gradients):
    probe, out = tmp_path / "probe", tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config,
        "--main_process_port",
        "0",
        "tests/helpers/self_check_ranks.py",
        str(probe),
        "training_configs/tiny-simpo-cpu.yaml",
        f"--output_dir={out}",
        "--max_steps=2",
        "--eval_strategy=no",
        "--eval_on_start=false",
        "--do_eval=false",
        "--report_to=none",
        "--save_strategy=no",
    ]
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": f"{REPO}/tests/helpers"}
    run = subprocess.run(command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    decisions = [json.loads((probe / f"decision{rank}.json").read_text()) for rank in (0, 1)]
    assert decisions[0]["path"] == decisions[1]["path"]  # one choice
    path = decisions[0]["path"]
    assert path["logps"] == "full logits"  # the tiles were wrong on rank 1 only
    # max over ranks: padding-free 2.0 s, not padding-free 3.0 s; rank 1 alone would have kept the latter
    assert path["layout"] == {"prefix_sharing": True, "padding_free": True, "flex": False}
    assert decisions[0]["layout"] == decisions[1]["layout"] == "prefix sharing + padding-free"
    for decision in decisions:
        assert decision["gradients"].startswith(gradients)
        rows = {row["path"]: row for row in decision["rows"]}
        assert rows["plain, torch tiles"]["verdict"] == "differs"  # on both: rank 1's figure, reduced
        assert rows["plain, torch tiles"]["logp_error"] == pytest.approx(0.05, rel=1e-3)
        timed = {p: r["step_seconds"] for p, r in rows.items() if r["step_seconds"] is not None}
        assert timed == {
            "prefix sharing + padding-free (dense masks), full logits": 2.0,
            "prefix sharing (dense masks), full logits": 3.0,
        }
    records = [json.loads((probe / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert records[0]["param_sum"] == records[1]["param_sum"] and records[0]["global_step"] == 2
