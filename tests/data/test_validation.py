"""Bad input gets a clear error naming the dataset, split, row and fix; degenerate pairs a counted drop."""

import json
import logging

import pytest
from datasets import Dataset

from simpo.config.arguments import ModelArguments
from simpo.data.mixer import mix_datasets
from simpo.data.validation import report_drops
from simpo.errors import DataError
from simpo.train.config import SimPOConfig
from simpo.train.trainer import SimPOTrainer

USER = {"role": "user", "content": "q"}


def good(i=0):
    return {
        "prompt": "q",
        "chosen": [USER, {"role": "assistant", "content": f"good {i}"}],
        "rejected": [USER, {"role": "assistant", "content": f"bad {i}"}],
    }


def source_with(tmp_path, rows, name="src"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


@pytest.mark.parametrize(
    "bad_row,message",
    [
        ({"prompt": "q", "chosen": good()["chosen"]}, "'rejected': missing (null)"),
        (dict(good(), chosen="text"), "'chosen': expected a non-empty list of {role, content} messages, got str"),
        (dict(good(), rejected=[USER, {"role": "assistant"}]), "'rejected': message 1 is not a {role, content} dict"),
        (
            dict(good(), chosen=[{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]),
            "'chosen': message 0 has unknown role 'human'",
        ),
        (
            dict(good(), chosen=[USER, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]),
            "'chosen': the last message must be the assistant's reply, not 'user'",
        ),
        (dict(good(), rejected=[USER, {"role": "assistant", "content": 3}]), "'rejected': message 1 content is int"),
        (
            dict(good(), rejected=[{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}]),
            "'chosen' and 'rejected' have different prompt turns",
        ),
        (
            {
                "prompt": "q",
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
            "'chosen' has no prompt turns before the reply: put the user's message(s) before",
        ),
        (dict(good(), prompt=[USER]), "'chosen' or 'rejected' repeats the 'prompt' messages, which would be scored"),
    ],
)
def test_malformed_row_names_source_split_row_and_problem(tmp_path, bad_row, message):
    src = source_with(tmp_path, [good(0), good(1), good(2), bad_row])
    with pytest.raises(DataError) as error:
        mix_datasets({src: 1.0}, ["train"])
    assert str(error.value).startswith(f"{src}/train.jsonl line 4: {message}")  # the file's 4th line
    assert "OpenAI format" in str(error.value)


def test_missing_column_is_named(tmp_path):
    src = source_with(tmp_path, [{"prompt": "q", "chosen": good()["chosen"], "other": 1}])
    missing = r"\[train\] has no column 'rejected' \(it has \['prompt', 'chosen', 'other'\]\)"
    with pytest.raises(DataError, match=missing):
        mix_datasets({src: 1.0}, ["train"])


@pytest.mark.parametrize("content", ["", "\n\n  \n"])  # an empty file, one of blank lines
def test_empty_split_is_an_error(tmp_path, content):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "train.jsonl").write_text(content)
    with pytest.raises(DataError, match=r"empty \[train\] is empty: remove it from dataset_mixer or fix the data"):
        mix_datasets({str(folder): 1.0}, ["train"])


def test_a_broken_json_line_is_named_by_file_and_line(tmp_path):
    src = source_with(tmp_path, [good(0), good(1), good(2)])
    path = tmp_path / "src" / "train.jsonl"
    path.write_text(path.read_text() + json.dumps(good(3))[:25] + "\n")  # a last line cut off mid-write
    with pytest.raises(DataError, match=rf"^{src}/train.jsonl line 4: .*Fix the file"):
        mix_datasets({src: 1.0}, ["train"])


def test_a_split_in_two_formats_is_refused_not_read_twice(tmp_path):
    src = source_with(tmp_path, [good(0), good(1)])
    (tmp_path / "src" / "train.json").write_text(json.dumps([good(0), good(1)]))
    with pytest.raises(
        DataError,
        match=r"split 'train' has files in more than one format \(train.json, train.jsonl"
        r"\): keep one, or its rows would be read twice",
    ):
        mix_datasets({src: 1.0}, ["train"])


def test_a_fraction_that_selects_no_row_says_so(tmp_path):
    src = source_with(tmp_path, [good(i) for i in range(40)])
    with pytest.raises(
        DataError,
        match=r"\['.*src'\] = 0.01 selects 0 of the 40 rows of \[train\]: raise the "
        r"fraction to at least 0.025",
    ):
        mix_datasets({src: 0.01}, ["train"])
    assert len(mix_datasets({src: 0.025}, ["train"])["train"]) == 1


def test_fraction_above_one_is_explained(tmp_path):
    src = source_with(tmp_path, [good()])
    with pytest.raises(DataError, match=r"= 2.0: a fraction is in \(0, 1\].*to repeat data, train more epochs"):
        mix_datasets({src: 2.0}, ["train"])


def tokenized(tmp_path, rows: list[dict], **overrides):
    """The recipe's data path for one source: mixer (with each row's origin), chat template, tokenisation."""
    from conftest import TINY_MODEL
    from transformers import AutoTokenizer

    from simpo.data.chat_templates import apply_chat_template
    from simpo.data.tokenization import tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    src = source_with(tmp_path, rows)
    mixed = mix_datasets({src: 1.0}, ["train"], seed=1)["train"]
    templated = mixed.map(apply_chat_template, fn_kwargs={"tokenizer": tokenizer})
    args = SimPOConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=64, max_prompt_length=32, **overrides
    )
    return src, mixed, *tokenize_pairs(templated, tokenizer, args, "train_dataset")[:2]


def test_degenerate_pairs_are_dropped_counted_and_listed_with_their_row_in_the_source(tmp_path, caplog):
    identical = dict(good(), rejected=good()["chosen"])
    empty = dict(good(), chosen=[USER, {"role": "assistant", "content": "  "}])
    src, mixed, kept, drops = tokenized(tmp_path, [good(0), identical, good(1), empty, good(2), identical])
    assert mixed["origin"] != sorted(mixed["origin"], key=lambda o: o["index"])  # shuffled: rows are not positions
    assert len(kept) == 3 and "origin" not in kept.column_names
    # Rows of the user's file, in the order the shuffled mixture met them: (line, 0-based index, reason).
    assert sorted((d.line, d.index, d.reason) for d in drops) == [
        (2, 1, "identical chosen and rejected responses"),
        (4, 3, "empty response"),
        (6, 5, "identical chosen and rejected responses"),
    ]
    assert {(d.source, d.split, d.file) for d in drops} == {(src, "train", f"{src}/train.jsonl")}
    with caplog.at_level(logging.WARNING):
        report_drops(drops, str(tmp_path / "out"))
    assert (
        "Dropped 3 preference pairs (2 identical chosen and rejected responses, 1 empty response); rows listed"
        f" in {tmp_path / 'out' / 'dropped_pairs.jsonl'}"
    ) in caplog.text
    listed = [json.loads(line) for line in (tmp_path / "out" / "dropped_pairs.jsonl").read_text().splitlines()]
    assert listed == [
        {"source": src, "split": "train", "index": d.index, "file": d.file, "line": d.line, "reason": d.reason}
        for d in drops
    ]
    report_drops([], str(tmp_path / "out"))  # a later launch into the folder that drops nothing: no stale list
    assert not (tmp_path / "out" / "dropped_pairs.jsonl").exists()


def test_a_split_with_every_pair_dropped_stops_the_run_naming_why(tmp_path):
    identical = dict(good(), rejected=good()["chosen"])
    with pytest.raises(
        DataError,
        match=r"All 2 pairs of train were dropped \(2 identical chosen and rejected"
        r" responses\), e.g. .*/train.jsonl line 1: nothing would be left",
    ):
        tokenized(tmp_path, [identical, identical])


def test_degenerate_pairs_can_be_an_error(tmp_path):
    with pytest.raises(
        DataError,
        match=r"/train.jsonl line 2: identical chosen and rejected responses \(1 such pairs\)\."
        " Fix the data, or set on_degenerate_pairs: drop",
    ):
        tokenized(tmp_path, [good(0), dict(good(), rejected=good()["chosen"])], on_degenerate_pairs="error")


def test_response_truncated_to_nothing_is_dropped_naming_the_trainers_dataset(tmp_path, make_tokenizer):
    from simpo.data.tokenization import tokenize_pairs

    # No EOS to append: an empty response string has no token at all.
    tok = make_tokenizer(["<s>", "<pad>"], bos="<s>")
    tok.pad_token = "<pad>"
    rows = Dataset.from_list(
        [
            {"prompt": "ab", "chosen": "c", "rejected": ""},
            {"prompt": "ab", "chosen": "c", "rejected": "d"},
            {"prompt": "x", "chosen": "yy", "rejected": "yy"},
        ]
    )
    args = SimPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=16, max_prompt_length=8)
    kept, drops, _ = tokenize_pairs(rows, tok, args, "train_dataset")
    assert len(kept) == 1 and kept[0]["rejected_input_ids"][-1] == tok.convert_tokens_to_ids("d")
    assert [(d.source, d.index, d.reason) for d in drops] == [
        ("train_dataset", 0, "empty response"),
        ("train_dataset", 2, "identical chosen and rejected responses"),
    ]
    # Without BOS or prompt, the first response token has no position before it to be scored from.
    no_bos = make_tokenizer(["<pad>"])
    rows = Dataset.from_list(
        [{"prompt": "", "chosen": "cc", "rejected": "d"}, {"prompt": "", "chosen": "ee", "rejected": "ff"}]
    )
    _, drops, _ = tokenize_pairs(rows, no_bos, args, "x")
    assert [(d.source, d.index, d.reason) for d in drops] == [("x", 0, "response with no token to score")]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"max_length": 128, "max_prompt_length": 128},
            r"max_prompt_length \(128\) must be at least 1 and below max_l",
        ),
        (
            {"max_length": 20, "max_prompt_length": -5},
            r"max_prompt_length \(-5\) must be at least 1 and below max_leng",
        ),
        ({"max_length": 20, "max_prompt_length": 0}, r"max_prompt_length \(0\) must be at least 1"),
        ({"beta": float("nan")}, r"beta must be a finite number \(got nan\)"),
        ({"gamma_beta_ratio": float("inf")}, r"gamma_beta_ratio must be a finite number \(got inf\)"),
        ({"sft_weight": float("nan")}, r"sft_weight must be a finite number"),
        ({"remove_unused_columns": True}, "remove_unused_columns must be false: simpo's collator reads the tokenised"),
        ({"use_cache": True}, "use_cache: true has no effect: training runs without the KV cache"),
        (
            {"do_predict": True},
            "do_predict has no effect: simpo has no prediction step. Evaluate with do_eval, or with",
        ),
        ({"beta": -1.0}, r"beta must be positive \(got -1.0\); the paper uses 2 to 10"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\) \(got 0.5\)"),
        ({"sft_weight": -0.1}, r"sft_weight must be >= 0"),
        (
            {"padding_free": True, "prefix_sharing": False},
            "padding_free packs prefix-shared pairs: it needs prefix_shar",
        ),
    ],
)
def test_config_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimPOConfig(output_dir=str(tmp_path), use_cpu=True, **kwargs)


def test_config_warnings(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        SimPOConfig(
            output_dir=str(tmp_path),
            use_cpu=True,
            loss_type="hinge",
            label_smoothing=0.1,
            beta=0.1,
            gamma_beta_ratio=-0.2,
        )
    assert "label_smoothing=0.1 has no effect with loss_type=hinge" in caplog.text
    assert "gamma_beta_ratio=-0.2 is negative" in caplog.text
    assert "beta=0.1 is a DPO-scale value" in caplog.text


def test_both_quantisations_is_an_error():
    with pytest.raises(ValueError, match="load_in_8bit and load_in_4bit are both true: choose one"):
        ModelArguments(load_in_4bit=True, load_in_8bit=True)


def test_non_finite_loss_stops_training_naming_the_step(tmp_path):
    import torch
    from conftest import TINY_MODEL
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    rows = Dataset.from_list([{"prompt": "hello", "chosen": "good", "rejected": "bad"}] * 4)
    args = SimPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        max_steps=2,
        per_device_train_batch_size=2,
        max_length=32,
        max_prompt_length=16,
        save_strategy="no",
    )
    trainer = SimPOTrainer(model, args=args, train_dataset=rows, processing_class=tokenizer)
    with pytest.raises(
        FloatingPointError,
        match=r"Non-finite SimPO loss \(nan\) in training at step 1: per-pair"
        r" losses \[nan, nan\], response lengths \[\d+, \d+, \d+, \d+\]",
    ):
        trainer.train()


def test_run_on_dirty_data_finishes_finite_and_reports_drops(tmp_path, caplog, capsys):
    import math

    from conftest import TINY_DATA

    from simpo.train.recipe import train_main

    rows = [json.loads(line) for line in open(f"{TINY_DATA}/train.jsonl")][:90]
    for row in rows[:20]:  # prompts far longer than max_length: truncated, still trained on
        long_prompt = " ".join([row["chosen"][0]["content"]] * 60)
        for side in ("chosen", "rejected"):
            row[side][0]["content"] = long_prompt
    long_reply = {"role": "assistant", "content": "word " * 40_000}  # 200,000 characters
    rows[30] = dict(rows[30], chosen=rows[30]["chosen"][:1] + [long_reply])
    degenerate = [dict(rows[i], rejected=rows[i]["chosen"]) for i in range(20, 25)]
    degenerate += [
        dict(rows[i], chosen=rows[i]["chosen"][:1] + [{"role": "assistant", "content": ""}]) for i in range(25, 30)
    ]
    src = source_with(tmp_path, rows + degenerate, name="dirty")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        train_main(
            [
                "training_configs/tiny-simpo-cpu.yaml",
                f"--dataset_mixer={{{src}: 1.0}}",
                "--dataset_splits=train",
                f"--output_dir={out}",
                "--max_steps=4",
                "--eval_strategy=no",
                "--do_eval=false",
                "--eval_on_start=false",
                "--report_to=none",
                "--logging_steps=1",
            ]
        )
    assert "Dropped 10 preference pairs (5 identical chosen and rejected responses, 5 empty response)" in caplog.text
    printed = capsys.readouterr().out
    assert "90 train pairs (10 dropped)" in printed  # the start summary counts every drop, and every cut
    assert "truncation      train 20 prompts and 1 replies cut (of 90 pairs) at max_length 128; listed in" in printed
    assert "Truncated train_dataset to max_length 128 (prompts to max_prompt_length 64 first): 20" in caplog.text
    cut = [json.loads(line) for line in (out / "truncated_pairs.jsonl").read_text().splitlines()]
    assert sorted(c["line"] for c in cut) == list(range(1, 21)) + [31]  # the lines of the user's file
    long = next(c for c in cut if c["line"] == 31)
    assert long["chosen"][1] == 128 - 64 and long["chosen"][0] > 40_000 and long["rejected"] is None
    assert all(c["prompt"][1] == 64 for c in cut if c["line"] <= 20)
    dropped = [json.loads(line) for line in (out / "dropped_pairs.jsonl").read_text().splitlines()]
    assert sorted(d["line"] for d in dropped) == list(range(91, 101))  # the lines of the user's file
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert json.loads((out / "train_results.json").read_text())["train_samples"] == 90


@pytest.mark.parametrize("evaluation", [[], ["--eval_strategy=no", "--do_eval=false"]])  # all on; eval_on_start alone
def test_evaluation_without_a_test_split_stops_before_the_model_loads(tmp_path, monkeypatch, evaluation):
    from simpo.train import recipe as cli

    monkeypatch.setattr(cli, "SimPOTrainer", lambda *a, **k: pytest.fail("the model must not be loaded"))
    with pytest.raises(
        DataError,
        match="Evaluation is on \\(do_eval, eval_strategy or eval_on_start\\) but"
        " dataset_splits has no test split: add one \\(e.g. test_prefs\\) or set do_eval: false,"
        ' eval_strategy: "no" and eval_on_start: false',
    ):
        cli.train_main(
            [
                "training_configs/tiny-simpo-cpu.yaml",
                "--dataset_splits=train",
                f"--output_dir={tmp_path}",
                "--report_to=none",
                *evaluation,
            ]
        )
