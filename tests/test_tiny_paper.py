"""A learning test: the paper's chain (SFT -> on-policy samples -> a verifiable reward -> binarise -> SimPO) makes the
tiny model better at a task, measured on held-out prompts (scripts/run_tiny_paper.py --quick, one seed).

CPU runs are deterministic for a seed (the data, the model's initialisation, every stage's seed are fixed), and the
setting is chosen with a wide margin (see benchmarks/results/tiny_paper.md), so this is no flaky statistic."""

import importlib.util
import json
import os
import time

import pytest
from conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("run_tiny_paper", os.path.join(REPO, "scripts", "run_tiny_paper.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.slow
def test_simpo_on_its_own_verified_samples_beats_sft_on_held_out_prompts_every_time_it_runs(tmp_path):
    """The command twice in a row into the same folder: the second run works and repeats the first exactly."""
    script = load_script()
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

    first_answers = (tmp_path / "answers" / "simpo.jsonl").read_text()
    second_start = time.time()
    again = script.main(["--quick", "--seeds", "1", "--output-dir", str(tmp_path)])["seeds"]["1"]
    for key in ("sft_accuracy", "simpo_accuracy", "ci95", "pairs", "pairs_dropped", "runs"):
        assert again[key] == result[key], key
    assert (tmp_path / "answers" / "simpo.jsonl").read_text() == first_answers
    # every stage started afresh: nothing of the first run is left to resume from
    for path in (
        "base/config.json",
        "sft/model.safetensors",
        "onpolicy/generations/settings.json",
        "simpo/model.safetensors",
    ):
        assert os.path.getmtime(tmp_path / "seed1" / path) >= second_start, path
    for stage in ("generate", "annotate", "binarise"):
        assert "resuming" not in (tmp_path / "seed1" / f"{stage}.log").read_text(), stage


def test_a_seed_folder_with_files_the_chain_did_not_write_is_refused_not_removed(tmp_path):
    script = load_script()
    seed = tmp_path / "seed1"
    (seed / "sft").mkdir(parents=True)
    (seed / "sft.log").write_text("from an earlier run")
    (seed / "simpo-lr0.0003").mkdir()
    script.fresh_folder(seed)  # only what the chain writes: removed
    assert not seed.exists()
    (seed / "sft").mkdir(parents=True)
    (seed / "my-notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match=r"seed1 holds files this script did not write \(my-notes.txt\)"):
        script.fresh_folder(seed)
    assert (seed / "my-notes.txt").read_text() == "keep me" and (seed / "sft").is_dir()
