"""Packing as the paper's SFT configs use it (bfd_split, as alignment-handbook's run_sft.py packed: rows of
max_length tokens, a long conversation carried on into another row): the loss is the NLL of each conversation's
assistant tokens on its own (no attention across conversations), the labels survive packing, and packing cuts the
step count the way the token count says."""

import math
import os
from collections import Counter

import pytest
from conftest import TINY_MODEL
from datasets import load_dataset
from test_sft_recipe import QUIET, TINY_CHAT, TINY_SFT, reference_nll
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTTrainer

from simpo.sft.config import SFTRunConfig
from simpo.sft.recipe import sft_main
from simpo.sft.tokenization import IGNORE, tokenize_conversations


def tiny_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def conversations(split: str, count: int | None = None):
    rows = load_dataset("json", data_files=os.path.join(TINY_CHAT, f"{split}.jsonl"), split="train")
    return (rows if count is None else rows.select(range(count))).select_columns(["messages"])


def fragments(row: dict, size: int) -> list[tuple[tuple, tuple]]:
    """A conversation cut into pieces of `size` tokens from its start: what bfd_split carries from row to row."""
    ids, labels = row["input_ids"], row["labels"]
    return [(tuple(ids[i : i + size]), tuple(labels[i : i + size])) for i in range(0, len(ids), size)]


def packed_segments(dataset) -> list[tuple[tuple, tuple]]:
    """Each packed row cut back at its sequence boundaries (seq_lengths)."""
    out = []
    for row in dataset:
        start = 0
        for n in row["seq_lengths"]:
            out.append((tuple(row["input_ids"][start : start + n]), tuple(row["labels"][start : start + n])))
            start += n
    return out


def test_bfd_split_carries_long_conversations_on_keeps_labels_and_attends_within_each_piece(tmp_path):
    tokenizer, size = tiny_tokenizer(), 40
    dataset, drops, counts = tokenize_conversations(conversations("test", 12), tokenizer, None, "eval")
    assert drops == [] and counts["longest"] > size  # some conversations are longer than a row: they get split
    # One evaluation batch: the trainer's eval_loss averages batch means, the reference is one token-weighted mean.
    args = SFTRunConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        per_device_eval_batch_size=64,
        max_length=size,
        packing=True,
        packing_strategy="bfd_split",
    )
    trainer = SFTTrainer(TINY_MODEL, args=args, train_dataset=dataset, eval_dataset=dataset, processing_class=tokenizer)
    pieces = [piece for row in dataset for piece in fragments(row, size)]
    packed = trainer.eval_dataset
    assert len(packed) < len(pieces) and all(len(row["input_ids"]) <= size for row in packed)
    # Every token and its label (assistant-only) arrives, each piece whole and apart: nothing cut off, nothing joined.
    assert Counter(packed_segments(packed)) == Counter(pieces)
    assert sum(label != IGNORE for _, labels in pieces for label in labels) == counts["labelled"]
    # The loss is each piece's NLL on its own: no piece attends to another in its row (a piece's first token has
    # nothing before it to be predicted from, in the reference too).
    expected = reference_nll(
        AutoModelForCausalLM.from_pretrained(TINY_MODEL).eval(),
        [{"input_ids": ids, "labels": labels} for ids, labels in pieces],
    )
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-5)


class Steps(TrainerCallback):
    """Records the planned optimizer steps and the training rows, then stops after the first step."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.max_steps, self.rows = state.max_steps, train_dataloader.dataset

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = True


def planned(tmp_path, *overrides) -> Steps:
    probe = Steps()
    sft_main(
        [
            TINY_SFT,
            f"--output_dir={tmp_path}",
            "--eval_strategy=no",
            "--do_eval=false",
            "--eval_on_start=false",
            *QUIET,
            *overrides,
        ],
        callbacks=[probe],
    )
    return probe


def test_packing_the_tiny_config_cuts_the_steps_as_the_token_count_says(tmp_path):
    # The tiny config: max_length 128, 16 rows per step, 1 epoch. Token count of its train split, conversations whole.
    max_length, batch = 128, 16
    _, drops, counts = tokenize_conversations(conversations("train"), tiny_tokenizer(), None, "train")
    conversations_, tokens = counts["rows"], counts["tokens"]
    assert drops == [] and counts["longest"] <= max_length

    unpacked = planned(tmp_path / "unpacked")
    assert unpacked.max_steps == math.ceil(conversations_ / batch) == 28

    packed = planned(tmp_path / "packed", "--packing=true", "--packing_strategy=bfd_split")
    rows = packed.rows
    assert sum(len(row["input_ids"]) for row in rows) == tokens  # every token trained on, none padded
    # As full as rows of 128 tokens can be: ceil(tokens / 128) rows, best-fit leaving a few percent room.
    assert math.ceil(tokens / max_length) <= len(rows) <= math.ceil(1.05 * tokens / max_length)
    assert packed.max_steps == math.ceil(len(rows) / batch)
    per_step = max_length * batch
    assert math.ceil(tokens / per_step) <= packed.max_steps <= math.ceil(1.05 * tokens / per_step)
    assert packed.max_steps < unpacked.max_steps / 2
