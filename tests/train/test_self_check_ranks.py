"""The start-up self-check in 2 gloo processes (tests/helpers/self_check_ranks.py): a kernel wrong on rank 1 alone is
rejected on both ranks, and layouts timed differently on each rank give one choice, the one the slower rank times
fastest; both ranks then train the same layout in step (DDP) or through ZeRO-3 (whose check compares the log-probs
alone: a backward there would reduce into the optimizer's partitions)."""

import json

import pytest
from test_distributed import finished, launch

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
    run = finished(launch(tmp_path, config, train_args=("--max_steps=2",), script="tests/helpers/self_check_ranks.py"))
    probe = tmp_path / "probe"
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
    assert run.records[0]["param_sum"] == run.records[1]["param_sum"] and run.records[0]["global_step"] == 2
