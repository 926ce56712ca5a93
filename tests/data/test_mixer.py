import functools
import json
import shutil

import pytest
from datasets import Dataset, DatasetDict

from simpo.data.mixer import mix_datasets
from simpo.errors import DataError


def pair(i, split="train"):
    user = {"role": "user", "content": f"{split} question {i}"}
    return {
        "prompt": user["content"],
        "chosen": [user, {"role": "assistant", "content": f"good {i}"}],
        "rejected": [user, {"role": "assistant", "content": f"bad {i}"}],
        "score": i,
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sources(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    write_jsonl(files / "train.jsonl", [pair(i) for i in range(10)])
    write_jsonl(files / "test.jsonl", [pair(i, "test") for i in range(4)])
    saved = tmp_path / "saved"
    DatasetDict(
        {
            "train_prefs": Dataset.from_list([pair(100 + i) for i in range(20)]),
            "test_prefs": Dataset.from_list([pair(100 + i, "test") for i in range(6)]),
        }
    ).save_to_disk(str(saved))
    return files, saved


def test_fractions_subsample_train_and_keep_test_whole(sources):
    files, saved = sources
    mixed = mix_datasets({str(files): 0.5}, ["train", "test"])
    assert len(mixed["train"]) == 5 and len(mixed["test"]) == 4
    assert sorted(mixed["train"].column_names) == ["chosen", "origin", "prompt", "rejected"]  # score dropped
    # each row's origin: the source, the split, its 0-based index there and its file and line, whatever the shuffle did
    assert sorted((o["index"], o["line"]) for o in mixed["train"]["origin"]) == [(i, i + 1) for i in range(5)]
    assert {o["file"] for o in mixed["train"]["origin"]} == {str(files / "train.jsonl")}
    assert {(o["source"], o["split"]) for o in mixed["test"]["origin"]} == {(str(files), "test")}
    mixed = mix_datasets({str(saved): 0.25}, ["train_prefs", "test_prefs"])
    assert len(mixed["train"]) == 5 and len(mixed["test"]) == 6
    # the first 25% of the source, in shuffled order
    assert sorted(r["prompt"] for r in mixed["train"]) == [f"train question {100 + i}" for i in range(5)]


def test_two_sources_are_concatenated_and_shuffled_with_the_seed(sources, tmp_path):
    files, _ = sources
    single = tmp_path / "extra.jsonl"
    write_jsonl(single, [pair(50 + i) for i in range(4)])
    a = mix_datasets({str(files): 1.0, str(single): 1.0}, ["train"], seed=3)
    b = mix_datasets({str(files): 1.0, str(single): 1.0}, ["train"], seed=3)
    c = mix_datasets({str(files): 1.0, str(single): 1.0}, ["train"], seed=4)
    assert len(a["train"]) == 14 and "test" not in a
    assert a["train"]["prompt"] == b["train"]["prompt"] != c["train"]["prompt"]
    assert a["train"]["prompt"] != sorted(a["train"]["prompt"], key=lambda p: int(p.split()[-1]))


def test_single_file_is_train_only(sources, tmp_path):
    single = tmp_path / "one.jsonl"
    write_jsonl(single, [pair(0)])
    with pytest.raises(DataError, match="a single file is a train split only"):
        mix_datasets({str(single): 1.0}, ["train", "test"])


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_fraction_outside_range(sources, fraction):
    files, _ = sources
    with pytest.raises(DataError, match=r"a fraction is in \(0, 1\]"):
        mix_datasets({str(files): fraction}, ["train"])


def test_missing_split_names_the_source_and_its_splits(sources):
    _, saved = sources
    with pytest.raises(DataError, match=r"no split 'test' \(it has \['test_prefs', 'train_prefs'\]\)"):
        mix_datasets({str(saved): 1.0}, ["train_prefs", "test"])


def test_split_that_is_neither_train_nor_test(sources):
    files, _ = sources
    with pytest.raises(DataError, match="Split 'validation' names neither train nor test"):
        mix_datasets({str(files): 1.0}, ["validation"])


def test_row_not_in_message_format_names_source_split_and_row(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    rows = [pair(0), pair(1), dict(pair(2), chosen="just a string")]
    write_jsonl(folder / "train.jsonl", rows[:2])
    (folder / "train.jsonl").write_text(
        (folder / "train.jsonl").read_text()
        + json.dumps(
            {
                "prompt": "p",
                "chosen": [{"role": "user", "content": "p"}, {"role": "bot", "content": "x"}],
                "rejected": pair(2)["rejected"],
                "score": 2,
            }
        )
        + "\n"
    )
    with pytest.raises(DataError, match=rf"^{folder}/train.jsonl line 3: 'chosen': message 1 has unknown role 'bot'"):
        mix_datasets({str(folder): 1.0}, ["train"])


def test_the_code_fingerprint_covers_modules_in_subpackages(tmp_path, monkeypatch):
    """An edit to any module under simpo/, a subpackage's included, gives cached rows a new fingerprint."""
    from simpo.data import mixer

    copy = tmp_path / "simpo"
    shutil.copytree(mixer.SIMPO_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(mixer, "SIMPO_ROOT", copy)
    monkeypatch.setattr(mixer, "simpo_code_hash", functools.cache(mixer.simpo_code_hash.__wrapped__))
    rows = Dataset.from_list([{"a": 1}])
    assert (copy / "train" / "loss.py") in mixer.simpo_sources()
    before = mixer.map_fingerprint(rows, "settings")
    assert mixer.map_fingerprint(rows, "settings") == before  # same code: the cached rows are reused
    loss = copy / "train" / "loss.py"
    loss.write_text(loss.read_text() + "\n# an edit\n")
    mixer.simpo_code_hash.cache_clear()
    assert mixer.map_fingerprint(rows, "settings") != before


def with_extra_keys(row, **extra):
    """The row with `extra` keys on its assistant replies, as tool-using exports write them."""
    return {**row, **{side: [row[side][0], {**row[side][1], **extra}] for side in ("chosen", "rejected")}}


@pytest.mark.parametrize("row_format", ["pairs", "conversations"])
def test_empty_extra_message_keys_are_dropped_and_others_refused_naming_the_key(tmp_path, row_format):
    from simpo.data.mixer import PREFERENCE_PAIRS
    from simpo.sft.data import CONVERSATIONS

    as_row = (lambda r: r) if row_format == "pairs" else (lambda r: {"messages": r["chosen"]})
    fmt = PREFERENCE_PAIRS if row_format == "pairs" else CONVERSATIONS
    empty, named = tmp_path / "empty", tmp_path / "named"
    empty.mkdir(), named.mkdir()
    write_jsonl(
        empty / "train.jsonl",
        [as_row(with_extra_keys(pair(i), tool_calls=[], name=None)) if i % 2 else as_row(pair(i)) for i in range(4)],
    )
    mixed = mix_datasets({str(empty): 1.0}, ["train"], row_format=fmt)["train"]
    column = fmt.columns[-1]
    for row in mixed:  # every message is plain role and content again, as the chat template and the checks see it
        assert all(set(message) == {"role", "content"} for message in row[column])
    assert all(isinstance(message["content"], str) for row in mixed for message in row[column])

    write_jsonl(named / "train.jsonl", [as_row(pair(0)), as_row(with_extra_keys(pair(1), name="bot"))])
    column = "messages" if row_format == "conversations" else "chosen"
    with pytest.raises(
        DataError,
        match=rf"^{named}/train.jsonl line 2: '{column}': message 1 has 'name' = 'bot', which"
        " simpo does not train on",
    ):
        mix_datasets({str(named): 1.0}, ["train"], row_format=fmt)


def test_a_file_that_is_not_utf8_is_named_with_its_line_and_byte(tmp_path):
    folder = tmp_path / "latin"
    folder.mkdir()
    lines = [json.dumps(pair(0)), json.dumps(dict(pair(1), prompt="café"), ensure_ascii=False)]
    (folder / "train.jsonl").write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    byte = len(lines[0]) + 1 + lines[1].index("é")
    with pytest.raises(DataError, match=rf"{folder / 'train.jsonl'} line 2 \(byte {byte}\) is not UTF-8 .*0xe9"):
        mix_datasets({str(folder): 1.0}, ["train"])


@pytest.mark.parametrize("line,kind", [("[1, 2, 3]", "list"), ('"text"', "str")])
def test_a_json_line_that_is_not_an_object_is_named_with_file_and_line(tmp_path, line, kind):
    folder = tmp_path / "rows"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(pair(0)) + "\n" + line + "\n" + json.dumps(pair(1)) + "\n")
    with pytest.raises(
        DataError,
        match=rf"^{folder}/train.jsonl line 2: a JSON {kind}, not an object .*Fix the file \({folder} \[train\]",
    ):
        mix_datasets({str(folder): 1.0}, ["train"])


def test_a_csv_file_is_said_to_be_an_unsupported_format(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,rejected\na,b,c\n")
    with pytest.raises(DataError, match=r"CSV is not a supported format\. simpo reads \.jsonl/\.json .* and \.parquet"):
        mix_datasets({str(path): 1.0}, ["train"])
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.csv").write_text(path.read_text())
    with pytest.raises(DataError, match=r"no file for split 'train' .* train\.csv: CSV is not a supported format"):
        mix_datasets({str(folder): 1.0}, ["train"])


def test_duplicate_rows_are_counted_in_the_log(tmp_path, caplog):
    folder = tmp_path / "dups"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [pair(0)] * 5 + [pair(1), pair(2), dict(pair(1), score=9)])
    with caplog.at_level("WARNING"):
        mixed = mix_datasets({str(folder): 1.0}, ["train"])
    assert len(mixed["train"]) == 8  # counted, not dropped: the score column is not part of a pair
    assert "5 of the 8 train rows repeat an earlier row (identical prompt, chosen, rejected)" in caplog.text
