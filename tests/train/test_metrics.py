"""A training step's own work never waits for the device: metrics stay there until a log, and a NaN is caught one
micro-batch later or before the optimizer update, whichever comes first."""

from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_MODEL, tiny_config, tiny_rows
from host_reads import SimpoHostReads

import simpo.train.trainer
from simpo.train.metrics import FiniteLossGuard, PairWeightedMeans
from simpo.train.trainer import SimPOTrainer

SUM_OVER_PROCESSES = SimpleNamespace(reduce=lambda tensor, reduction: tensor)  # one process


def test_means_are_over_pairs_not_batches_and_pop_starts_afresh():
    means = PairWeightedMeans()
    means.add({"rewards/chosen": torch.tensor([1.0, 2.0, 3.0]), "loss": torch.tensor(6.0)})
    means.add({"rewards/chosen": torch.tensor([10.0]), "loss": torch.tensor(2.0)})
    got = means.pop(SUM_OVER_PROCESSES)
    assert got == pytest.approx({"rewards/chosen": (1 + 2 + 3 + 10) / 4, "loss": (6 * 3 + 2 * 1) / 4})
    assert means.pop(SUM_OVER_PROCESSES) == {}


def test_a_non_finite_loss_is_raised_at_the_next_micro_batch_or_check():
    guard = FiniteLossGuard()
    guard.watch(torch.tensor(float("nan")), lambda: "step 1 was NaN")  # not raised yet: no waiting on the device
    with pytest.raises(FloatingPointError, match="step 1 was NaN"):
        guard.watch(torch.tensor(1.0), lambda: "step 2")
    guard.watch(torch.tensor(float("inf")), lambda: "step 3 was inf")
    with pytest.raises(FloatingPointError, match="step 3 was inf"):
        guard.check()
    guard.check()  # nothing pending


@pytest.mark.parametrize("fused,layout", [(True, "shared"), (False, "shared"), (True, "plain"), (True, "packed")])
def test_a_training_micro_step_does_not_wait_for_the_device(tmp_path, fused, layout):
    tokenizer, rows = tiny_rows(6)
    args = tiny_config(tmp_path, fused_logps=fused, prefix_sharing=layout != "plain", padding_free=layout == "packed")
    trainer = SimPOTrainer(TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer)
    batch = trainer.layout([trainer.train_dataset[i] for i in range(6)])
    trainer.compute_loss(trainer.model, batch)  # the first step checks the head once; that may read
    with SimpoHostReads() as mode:
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    assert mode.reads == []


def test_a_nan_stops_training_before_its_optimizer_step(tmp_path, monkeypatch):
    tokenizer, rows = tiny_rows(16)
    calls = []
    real_loss = simpo.train.trainer.simpo_loss

    def nan_from_the_second_step(*args, **kwargs):
        calls.append(1)
        losses = real_loss(*args, **kwargs)
        return losses * float("nan") if len(calls) >= 2 else losses

    monkeypatch.setattr(simpo.train.trainer, "simpo_loss", nan_from_the_second_step)
    args = tiny_config(tmp_path, max_steps=5, logging_steps=10, per_device_train_batch_size=2)
    trainer = SimPOTrainer(TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer)
    with pytest.raises(FloatingPointError, match=r"Non-finite SimPO loss \(nan\) in training at step 2"):
        trainer.train()
    assert trainer.state.global_step == 1 and len(calls) == 2  # found before step 2's optimizer update
