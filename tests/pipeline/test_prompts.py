"""Prompts for generation from the sources the dataset mixer reads."""

import json

import pytest
from datasets import Dataset, DatasetDict

from simpo.errors import DataError
from simpo.pipeline.prompts import load_prompts, prompt_turns


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_string_is_one_user_turn_and_a_message_list_is_kept():
    assert prompt_turns("hi", "x") == [{"role": "user", "content": "hi"}]
    turns = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert prompt_turns(turns, "x") == turns


@pytest.mark.parametrize("bad", ["", "  ", None, [{"role": "assistant", "content": "a"}], [{"role": "user"}]])
def test_a_bad_prompt_names_the_row(bad):
    with pytest.raises(DataError, match="src \\[train\\] row 3: a prompt must be"):
        prompt_turns(bad, "src [train] row 3")


def test_files_folder_train_fraction_test_whole_repeats_once(tmp_path):
    write_jsonl(tmp_path / "p" / "train.jsonl", [{"prompt": f"q{i % 8}"} for i in range(10)])  # q0, q1 twice
    write_jsonl(tmp_path / "p" / "test.jsonl", [{"prompt": f"t{i}"} for i in range(3)])
    sides = load_prompts({str(tmp_path / "p"): 1.0}, ["train", "test"], None, "prompt")
    assert [r["prompt"] for r in sides["train"]] == [f"q{i}" for i in range(8)]
    assert [r["messages"][0]["content"] for r in sides["test"]] == ["t0", "t1", "t2"]
    half = load_prompts({str(tmp_path / "p"): 0.5}, ["train", "test"], None, "prompt")
    assert len(half["train"]) == 5 and len(half["test"]) == 3


def test_save_to_disk_folder_with_hub_style_split_names(tmp_path):
    rows = lambda n: Dataset.from_list([{"question": f"q{i}"} for i in range(n)])
    DatasetDict({"train_prefs": rows(4), "test_prefs": rows(2)}).save_to_disk(str(tmp_path / "d"))
    sides = load_prompts({str(tmp_path / "d"): 1.0}, ["train_prefs", "test_prefs"], None, "question")
    assert {side: len(rows) for side, rows in sides.items()} == {"train": 4, "test": 2}


def test_missing_column_and_unknown_split_are_errors(tmp_path):
    write_jsonl(tmp_path / "p" / "train.jsonl", [{"text": "a"}])
    with pytest.raises(DataError, match="has no column 'prompt' \\(it has \\['text'\\]\\): set prompt_column"):
        load_prompts({str(tmp_path / "p"): 1.0}, ["train"], None, "prompt")
    with pytest.raises(DataError, match="Split 'validation' names neither train nor test"):
        load_prompts({str(tmp_path / "p"): 1.0}, ["validation"], None, "text")
