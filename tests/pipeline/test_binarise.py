"""simpo-binarise: best vs worst, the drop rules, the data set it writes and its summary."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from simpo.data.mixer import mix_datasets
from simpo.pipeline.binarise import best_and_worst, binarise, binarise_main
from simpo.pipeline.work_units import write_jsonl

USER = [{"role": "user", "content": "q"}]


def row(responses, scores, prompt="q"):
    return {"prompt": prompt, "messages": USER, "responses": responses, "scores": scores}


def test_chosen_is_the_highest_score_and_rejected_the_lowest():
    assert best_and_worst(row(["a", "b", "c", "d"], [0.1, 0.7, -0.3, 0.2])) == (1, 2)
    assert best_and_worst(row(["a", "b", "c"], [0.5, 0.5, 0.1])) == (0, 2)  # the first of equal best scores


def test_drop_rules():
    assert best_and_worst(row(["a", "b"], [0.3, 0.3])) == "tied scores"
    assert best_and_worst(row(["same", "x", "same"], [0.9, 0.5, 0.9])) == (0, 1)
    assert best_and_worst(row(["same", "same"], [0.9, 0.1])) == "identical responses"
    assert best_and_worst(row(["same", "same", "same"], [0.4, 0.4, 0.4])) == "identical responses"
    # Empty replies and unscored ones (too long for the reward model) are no candidates.
    assert best_and_worst(row(["", "b", "c"], [5.0, 0.2, 0.1])) == (1, 2)
    assert best_and_worst(row(["a", "b", "c"], [None, 0.2, None])) == "fewer than two scored, non-empty responses"


def test_min_score_gap_and_counts():
    rows = [row(["a", "b"], [1.0, 0.0]), row(["a", "b"], [0.2, 0.1]), row(["a", "b"], [0.0, 0.0])]
    pairs, drops, gaps = binarise(rows, min_score_gap=0.5)
    assert len(pairs) == 1 and dict(drops) == {"score gap below min_score_gap": 1, "tied scores": 1}
    assert gaps == [1.0, 0.2 - 0.1]
    assert pairs[0] == {
        "prompt": "q",
        "chosen": USER + [{"role": "assistant", "content": "a"}],
        "rejected": USER + [{"role": "assistant", "content": "b"}],
        "score_chosen": 1.0,
        "score_rejected": 0.0,
    }


def test_a_message_list_prompt_stays_the_prompt():
    turns = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    pairs, _, _ = binarise([{"prompt": turns, "messages": turns, "responses": ["a", "b"], "scores": [1, 0]}], 0.0)
    assert pairs[0]["prompt"] == turns and pairs[0]["chosen"] == [{"role": "assistant", "content": "a"}]


def test_writes_a_data_set_the_mixer_reads_unchanged_with_a_summary(tmp_path):
    out = tmp_path / "run"
    train = [row(["good answer here", "bad", "meh"], [0.9, -0.5, 0.1], prompt=f"q{i}") for i in range(5)]
    train.append(row(["x", "x"], [0.2, 0.2], prompt="tie"))
    test = [row(["short", "a much longer answer"], [0.1, 0.4], prompt="t")]
    write_jsonl(str(out / "annotations" / "train.jsonl"), train)
    write_jsonl(str(out / "annotations" / "test.jsonl"), test)
    summary = binarise_main([os.path.join(REPO, "onpolicy_configs", "tiny-cpu.yaml"), f"--output_dir={out}"])

    assert summary["train"]["pairs"] == 5 and summary["train"]["dropped"] == {"identical responses": 1}
    assert summary["test"]["share_chosen_longer"] == 1.0
    assert summary["train"]["score_gap"]["mean"] == 0.9 - (-0.5)
    assert json.loads((out / "dataset" / "summary.json").read_text()) == summary
    assert (out / "dataset" / "score_gaps.png").read_bytes()[:4] == b"\x89PNG"

    mixed = mix_datasets({str(out / "dataset"): 1.0}, ["train", "test"], seed=0)
    assert len(mixed["train"]) == 5 and len(mixed["test"]) == 1
    written = [json.loads(line) for line in (out / "dataset" / "train.jsonl").read_text().splitlines()]
    pair = lambda r: {c: r[c] for c in ("prompt", "chosen", "rejected")}
    key = lambda r: r["prompt"]
    assert sorted(map(pair, written), key=key) == sorted(map(pair, mixed["train"].to_list()), key=key)


@pytest.mark.slow
def test_the_console_command_exits_0_after_a_run(tmp_path):
    """A console script's return value is its exit status: simpo-binarise && simpo-train must chain."""
    out = tmp_path / "run"
    write_jsonl(str(out / "annotations" / "train.jsonl"), [row(["good", "bad"], [0.9, -0.5])])
    command = os.path.join(os.path.dirname(sys.executable), "simpo-binarise")
    done = subprocess.run(
        [command, os.path.join(REPO, "onpolicy_configs", "tiny-cpu.yaml"), f"--output_dir={out}"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "dataset" / "train.jsonl").exists()


def test_a_side_left_without_pairs_stops_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    write_jsonl(str(out / "annotations" / "train.jsonl"), [row(["good", "bad"], [0.9, -0.5])])
    write_jsonl(str(out / "annotations" / "test.jsonl"), [row(["a", "b"], [0.2, 0.1])])
    with pytest.raises(
        ValueError,
        match=r"no test pair is left from 1 prompts \(dropped: \{'score gap below "
        r"min_score_gap': 1\}\), .* Lower min_score_gap \(0.5\)",
    ):
        binarise_main(
            [os.path.join(REPO, "onpolicy_configs", "tiny-cpu.yaml"), f"--output_dir={out}", "--min_score_gap=0.5"]
        )
    assert not (out / "dataset").exists()


def test_a_nan_or_missing_score_is_an_unscored_candidate():
    """Before, [nan, 0.5, 0.1] dropped the prompt as "identical responses" and lost the 0.5-vs-0.1 pair."""
    nan = float("nan")
    assert best_and_worst(row(["a", "b", "c"], [nan, 0.5, 0.1])) == (1, 2)
    assert best_and_worst(row(["a", "b", "c"], [0.5, nan, 0.1])) == (0, 2)
    assert best_and_worst(row(["a", "b", "c"], [None, 0.5, 0.1])) == (1, 2)
    assert best_and_worst(row(["a", "b"], [nan, 0.5])) == "fewer than two scored, non-empty responses"


def test_a_row_without_scores_names_the_file_and_line(tmp_path):
    out = tmp_path / "run"
    (out / "annotations").mkdir(parents=True)
    path = out / "annotations" / "train.jsonl"
    good = json.dumps(row(["a", "b"], [1.0, 0.0]))
    path.write_text(good + "\n\n" + json.dumps({"prompt": "q", "messages": USER, "responses": ["a", "b"]}) + "\n")
    config = os.path.join(REPO, "onpolicy_configs", "tiny-cpu.yaml")
    with pytest.raises(
        ValueError,
        match=rf"^{path} line 3: a row needs 'responses' and 'scores' .* this one has no"
        r" 'scores'\. Give simpo-annotate's output: rerun simpo-annotate",
    ):
        binarise_main([config, f"--output_dir={out}"])
    path.write_text(good + "\n" + good[: len(good) // 2])
    with pytest.raises(ValueError, match=rf"^{path} line 2 is not a whole JSON row .* Rerun simpo-annotate"):
        binarise_main([config, f"--output_dir={out}"])
    assert not (out / "dataset").exists()
