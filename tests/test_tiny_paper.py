"""A learning test: the paper's chain (SFT -> on-policy samples -> a verifiable reward -> binarise -> SimPO) makes the
tiny model better at a task, measured on held-out prompts (scripts/run_tiny_paper.py --quick, one seed).

CPU runs are deterministic for a seed (the data, the model's initialisation, every stage's seed are fixed), and the
setting is chosen with a wide margin (see benchmarks/results/tiny_paper.md), so this is no flaky statistic."""

import importlib.util
import json
import os

import pytest
from conftest import REPO


@pytest.mark.slow
def test_simpo_on_its_own_verified_samples_beats_sft_on_held_out_prompts(tmp_path):
    spec = importlib.util.spec_from_file_location("run_tiny_paper", os.path.join(REPO, "scripts", "run_tiny_paper.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = script.main(["--quick", "--seeds", "1", "--output-dir", str(tmp_path)])

    result = report["seeds"]["1"]
    assert report["heldout_prompts"] == 200
    assert result["sft_accuracy"] < 0.5  # SFT learned the systematic mistake
    assert result["difference"] >= 0.2 and result["ci95"][0] > 0, result
    for name in ("report.json", "report.md", "report.png", "answers/sft.jsonl", "answers/simpo.jsonl"):
        assert (tmp_path / name).exists(), name
    rows = [json.loads(line) for line in open(tmp_path / "answers" / "simpo.jsonl")]
    assert len(rows) == 200 and set(rows[0]) == {"prompt_id", "prompt", "answer", "reference", "correct"}
    assert sum(r["correct"] for r in rows) / 200 == result["simpo_accuracy"]
