"""Rows a user can find: every row message and drop record names the file and its 1-based line (a 0-based index
beside it, named as such); a dataset path that does not exist is named with what was looked for and the nearest
folder, before any Hub lookup when it is plainly a path."""

import json
import os

import pytest
from conftest import REPO, TINY_MODEL
from datasets import Dataset
from refusals import refused
from transformers import AutoTokenizer

from simpo.data.chat_templates import render_pairs
from simpo.data.mixer import mix_datasets
from simpo.data.tokenization import tokenize_pairs
from simpo.data.validation import report_drops
from simpo.errors import DataError
from simpo.run.commands import report_input_errors
from simpo.train.config import SimPOConfig
from simpo.train.recipe import train_main

USER = {"role": "user", "content": "q"}
TINY = os.path.join(REPO, "training_configs", "tiny-simpo-cpu.yaml")


def good(i: int) -> dict:
    return {
        "prompt": "q",
        "chosen": [USER, {"role": "assistant", "content": f"good {i}"}],
        "rejected": [USER, {"role": "assistant", "content": f"bad {i}"}],
    }


def write_lines(path, lines: list[str]) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def test_a_missing_field_is_named_by_file_and_line_blank_lines_counted(tmp_path):
    """Line 6 of train.jsonl (a blank line before it: the 5th row, index 4) lacks 'rejected'."""
    missing = {"prompt": "q", "chosen": good(0)["chosen"]}
    lines = [json.dumps(good(i)) for i in range(2)] + [""] + [json.dumps(good(i)) for i in range(2, 4)]
    write_lines(tmp_path / "bad-missing" / "train.jsonl", lines + [json.dumps(missing)])
    with pytest.raises(DataError) as error:
        mix_datasets({str(tmp_path / "bad-missing"): 1.0}, ["train"])
    assert str(error.value).startswith(f"{tmp_path}/bad-missing/train.jsonl line 6: 'rejected': missing (null).")


def test_a_broken_json_line_is_named_with_the_files_path_and_line(tmp_path):
    lines = [json.dumps(good(i)) for i in range(5)] + [json.dumps(good(5))[:30]]
    write_lines(tmp_path / "broken" / "train.jsonl", lines)
    with pytest.raises(DataError, match=rf"^{tmp_path}/broken/train.jsonl line 6: "):
        mix_datasets({str(tmp_path / "broken"): 1.0}, ["train"])


def test_dropped_pairs_name_the_file_and_line_of_the_row(tmp_path):
    """dropped_pairs.jsonl: line 23 of the file is "line": 23 (the 0-based index 22 beside it, named "index")."""
    rows = [good(i) for i in range(30)]
    rows[22] = dict(good(22), rejected=good(22)["chosen"])  # identical replies: dropped
    write_lines(tmp_path / "prefs" / "train.jsonl", [json.dumps(r) for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    mixed = mix_datasets({str(tmp_path / "prefs"): 1.0}, ["train"], seed=3)
    args = SimPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=64, max_prompt_length=32)
    _, drops, _ = tokenize_pairs(render_pairs(mixed, tokenizer)["train"], tokenizer, args, "train_dataset")
    report_drops(drops, str(tmp_path / "out"))
    listed = [json.loads(line) for line in (tmp_path / "out" / "dropped_pairs.jsonl").read_text().splitlines()]
    assert listed == [
        {
            "source": str(tmp_path / "prefs"),
            "split": "train",
            "index": 22,
            "file": str(tmp_path / "prefs" / "train.jsonl"),
            "line": 23,
            "reason": "identical chosen and rejected responses",
        }
    ]


def test_rows_of_json_arrays_parquet_shards_and_saved_datasets_are_located(tmp_path):
    from datasets import DatasetDict

    folder = tmp_path / "array"
    folder.mkdir()
    rows = [good(i) for i in range(3)] + [{"prompt": "q", "chosen": good(0)["chosen"]}]
    (folder / "train.json").write_text("[\n" + ",\n\n".join(json.dumps(r) for r in rows) + "\n]\n")
    with pytest.raises(DataError, match=rf"^{folder}/train.json line 8: 'rejected': missing"):
        mix_datasets({str(folder): 1.0}, ["train"])

    shards = tmp_path / "shards"
    shards.mkdir()
    Dataset.from_list([good(i) for i in range(4)]).to_parquet(str(shards / "train-00000-of-00002.parquet"))
    bad = [good(4), dict(good(5), rejected=None)]
    Dataset.from_list(bad).to_parquet(str(shards / "train-00001-of-00002.parquet"))
    with pytest.raises(DataError, match=rf"^{shards}/train-00001-of-00002.parquet row 2: 'rejected': missing"):
        mix_datasets({str(shards): 1.0}, ["train"])

    saved = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list([good(0), dict(good(1), rejected=None)])}).save_to_disk(str(saved))
    with pytest.raises(DataError, match=rf"^{saved} \[train\] row index 1 \(0-based\): 'rejected': missing"):
        mix_datasets({str(saved): 1.0}, ["train"])


train = report_input_errors("simpo-train")(train_main)


@pytest.mark.parametrize(
    "source, pattern",
    [
        (
            "data/tiny-prefz",
            r"^dataset_mixer source 'data/tiny-prefz' is neither a local folder or file nor a reachable Hub dataset:"
            rf" looked for the folder or file {REPO}/data/tiny-prefz \(not found\), not looked up on the Hub, as it"
            r" is a path; nearest existing folder: data/ \(did you mean data/tiny-prefs\?\)\. Fix the name",
        ),
        (
            "data/does-not-exist",
            r"^dataset_mixer source 'data/does-not-exist' is neither .* not looked up on the Hub, as it is a path;"
            r" nearest existing folder: data/\. Fix",
        ),
        (
            "./no-such-folder/nothing/dataset",
            r"^dataset_mixer source './no-such-folder/nothing/dataset' is neither .*; nearest existing folder: \./",
        ),
        (
            "nobody-at-all/no-such-dataset",
            r"^dataset_mixer source 'nobody-at-all/no-such-dataset' is neither a local folder or file nor a reachable"
            r" Hub dataset: .* not in the local Hub cache, and HF_HUB_OFFLINE is set",
        ),
    ],
)
def test_a_dataset_that_is_not_there_is_one_line_naming_what_was_looked_for(
    monkeypatch, capsys, tmp_path, source, pattern
):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    refused(capsys, train, [TINY, f"--dataset_mixer={{{source}: 1.0}}", f"--output_dir={out}"], pattern)
    assert not out.exists()


def test_a_path_that_looks_local_is_not_looked_up_on_the_hub(monkeypatch, tmp_path):
    """No Hub request (and its retries) for a mistyped folder."""
    import simpo.data.mixer as mixer

    asked = []
    monkeypatch.setattr(mixer, "load_dataset", lambda *a, **k: asked.append(a))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for source in ("data/tiny-prefz", str(tmp_path / "nothing"), "~/no-such-folder-here", "prefs.jsonl"):
        with pytest.raises(DataError, match="is neither a local folder or file nor a reachable Hub dataset"):
            mix_datasets({source: 1.0}, ["train"])
    assert asked == []
