"""The run diagnostics (margin_over_gamma, lengths, padding share, throughput, global batch) against an independent
computation from the tokenised rows and a per-sequence forward pass."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_MODEL, reference_avg_logp, tiny_rows
from transformers import AutoModelForCausalLM

from simpo.reporting.summary import global_batch_size
from simpo.reporting.throughput import TokenThroughput
from simpo.train.config import SimPOConfig
from simpo.train.loss import preference_metrics
from simpo.train.reporting import simpo_start_summary
from simpo.train.trainer import SimPOTrainer

BETA, RATIO, PAIRS = 2.5, 0.025, 8


def test_margin_over_gamma_is_the_share_of_margins_beating_gamma():
    chosen = torch.tensor([-1.0, -1.0, -2.0, -1.0])
    rejected = torch.tensor([-1.5, -1.2, -1.0, -1.4])  # avg_w - avg_l = 0.5, 0.2, -1.0, 0.4
    m = preference_metrics(chosen, rejected, beta=2.0, gamma=0.6)  # gamma = 0.6; margins 1, .4, -2, .8
    assert m["rewards/margin_over_gamma"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert m["rewards/accuracies"].tolist() == [1.0, 1.0, 0.0, 1.0]
    # gamma = 0: the same as accuracy (a tie is neither).
    m0 = preference_metrics(chosen, rejected, beta=2.0)
    assert m0["rewards/margin_over_gamma"].tolist() == m0["rewards/accuracies"].tolist()


def response_length(labels: list[int]) -> int:
    return sum(1 for t in labels[1:] if t != -100)


def first_label(labels: list[int]) -> int:
    return next(i for i, t in enumerate(labels) if t != -100)


@pytest.fixture(scope="module")
def rows():
    return tiny_rows(PAIRS)


def one_logged_step(tmp_path, rows, **overrides):
    """lr 0, one step whose batch is the whole dataset: the logged values are those of that one batch."""
    tokenizer, data = rows
    args = SimPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        max_steps=1,
        logging_steps=1,
        learning_rate=0.0,
        per_device_train_batch_size=PAIRS,
        beta=BETA,
        gamma_beta_ratio=RATIO,
        max_length=128,
        max_prompt_length=64,
        save_strategy="no",
        **overrides,
    )
    trainer = SimPOTrainer(TINY_MODEL, args=args, train_dataset=data, processing_class=tokenizer)
    result = trainer.train()
    return trainer, trainer.state.log_history[0], result.metrics


@pytest.fixture(scope="module")
def plain(tmp_path_factory, rows):
    return one_logged_step(tmp_path_factory.mktemp("plain"), rows, prefix_sharing=False)


def test_logged_diagnostics_equal_an_independent_computation(plain):
    trainer, logged, final = plain
    tokenised = list(trainer.train_dataset)
    assert len(tokenised) == PAIRS
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL).eval()
    chosen = [reference_avg_logp(model, r["chosen_input_ids"], r["chosen_labels"]) for r in tokenised]
    rejected = [reference_avg_logp(model, r["rejected_input_ids"], r["rejected_labels"]) for r in tokenised]
    gamma = BETA * RATIO
    over = [float(BETA * a - BETA * b > gamma) for a, b in zip(chosen, rejected)]
    assert 0 < sum(over) < PAIRS  # gamma splits this batch, so both sides of the comparison are exercised
    assert logged["rewards/margin_over_gamma"] == pytest.approx(sum(over) / PAIRS)

    chosen_lengths = [response_length(r["chosen_labels"]) for r in tokenised]
    rejected_lengths = [response_length(r["rejected_labels"]) for r in tokenised]
    assert logged["lengths/chosen"] == pytest.approx(sum(chosen_lengths) / PAIRS)
    assert logged["lengths/rejected"] == pytest.approx(sum(rejected_lengths) / PAIRS)

    # Plain layout: 2B rows (chosen then rejected), each as long as its tokenised sequence, padded to the longest.
    sequence_lengths = [len(r[f"{side}_input_ids"]) for side in ("chosen", "rejected") for r in tokenised]
    real, cells = sum(sequence_lengths), len(sequence_lengths) * max(sequence_lengths)
    assert logged["tokens/padding_share"] == pytest.approx(1 - real / cells)
    assert 0 < logged["tokens/padding_share"] < 1

    assert logged["tokens/per_second"] > 0
    assert final["train_num_tokens"] == real  # real tokens only, padding not counted
    assert final["train_tokens_per_second"] > 0
    assert final["global_batch_size"] == PAIRS


def test_prefix_sharing_reports_the_same_pairs_and_its_own_padding(tmp_path, rows, plain):
    trainer, logged, final = one_logged_step(tmp_path, rows, prefix_sharing=True)
    _, plain_logged, _ = plain
    for key in ("rewards/margin_over_gamma", "lengths/chosen", "lengths/rejected", "rewards/accuracies"):
        assert logged[key] == pytest.approx(plain_logged[key], abs=1e-6)
    # One row per pair, [prompt | chosen | rejected]: the prompt (shared ids before the first label) runs once.
    row_lengths = []
    for r in trainer.train_dataset:
        c, rj = r["chosen_input_ids"], r["rejected_input_ids"]
        limit = min(first_label(r["chosen_labels"]), first_label(r["rejected_labels"]))
        shared = next((i for i in range(limit) if c[i] != rj[i]), limit)
        row_lengths.append(len(c) + len(rj) - shared)
    assert logged["tokens/padding_share"] == pytest.approx(1 - sum(row_lengths) / (len(row_lengths) * max(row_lengths)))
    # Tokens are counted as the plain layout would run them (the shared prompt once per side), so tokens/s compares
    # across layouts: the same total as the plain run.
    assert final["train_num_tokens"] == plain[2]["train_num_tokens"]


def test_start_summary_names_what_a_user_checks_first(plain):
    trainer, _, _ = plain
    text = simpo_start_summary(trainer, trainer.state)
    for expected in (
        "assets/tiny-llama",
        "trainable",
        f"{PAIRS} train pairs",
        "global batch    8 pairs",
        "precision",
        "sdpa",
        "distributed",
        "gamma 0.0625",
    ):
        assert expected in text, expected
    assert len(text.splitlines()) <= 25  # one screen


def test_global_batch_counts_accumulation_and_processes():
    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=8, world_size=4)
    assert global_batch_size(args) == 128


def test_throughput_leaves_evaluation_time_out(monkeypatch):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr("simpo.reporting.throughput.time.perf_counter", lambda: next(clock))
    accelerator = SimpleNamespace(reduce=lambda tensor, reduction: tensor)
    meter = TokenThroughput()
    meter.add(torch.ones(2, 50, dtype=torch.long).sum())
    meter.add(torch.tensor([[1, 1, 0, 0]]).sum())
    meter.exclude(6.0)  # 6 of the 10 seconds were evaluation
    assert meter.window(accelerator) == {"tokens/per_second": pytest.approx(102 / 4)}
    assert meter.window(accelerator) == {}  # nothing new
    assert meter.total(accelerator)["train_num_tokens"] == 102
    assert math.isclose(meter.total(accelerator)["train_tokens_per_second"], 25.5)
