"""No NaN reaches the weights or a checkpoint: a non-finite gradient stops training before its optimizer update, weights
that are not finite are never saved, and the advice names a checkpoint that is finite (both recipes)."""

import os
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, TINY_MODEL, tiny_config, tiny_rows
from safetensors.torch import load_file
from tiny_runs import SIMPO as TINY_SIMPO
from torch import nn
from transformers import TrainerCallback, TrainerControl

from simpo.errors import NonFiniteError
from simpo.run.finite import FiniteUpdates
from simpo.train.trainer import SimPOTrainer

SIMPO = [*TINY_SIMPO, "--max_steps=6", "--warmup_steps=0", "--save_strategy=steps", "--save_steps=1"]


def all_tensors_finite(checkpoint) -> bool:
    tensors = list(load_file(os.path.join(checkpoint, "model.safetensors")).values())
    optimizer = torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)
    tensors += [t for state in optimizer["state"].values() for t in state.values() if torch.is_tensor(t)]
    return all(torch.isfinite(t).all() for t in tensors)


def test_a_nan_gradient_norm_stops_before_its_update_and_no_checkpoint_holds_a_nan(tmp_path, monkeypatch):
    """The issue's run: learning rate 1e30, a checkpoint every step. Step 2's gradient norm is NaN (its loss is
    finite): before, step 2 was applied and checkpoint-2 saved with 20 NaN tensors."""
    from simpo.train.recipe import train_main

    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError) as raised:
        train_main([*SIMPO, f"--output_dir={out}", "--learning_rate=1e30"])
    message = str(raised.value)
    assert message.startswith("Non-finite gradient norm at step 2: stopped before its optimizer update")
    assert f"resumes from {out / 'checkpoint-1'}, the last complete checkpoint" in message
    checkpoints = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-1"] and all_tensors_finite(out / "checkpoint-1")


def test_the_sft_recipe_has_the_same_guard(tmp_path, monkeypatch):
    from simpo.sft.recipe import sft_main

    monkeypatch.chdir(REPO)
    out = tmp_path / "sft"
    with pytest.raises(NonFiniteError, match=r"Non-finite gradient norm at step \d+: stopped before its optimizer"):
        sft_main(
            [
                "training_configs/tiny-sft-cpu.yaml",
                "--report_to=none",
                "--do_eval=false",
                "--eval_strategy=no",
                "--eval_on_start=false",
                "--max_steps=6",
                "--save_strategy=steps",
                "--save_steps=1",
                "--warmup_steps=0",
                "--learning_rate=1e30",
                f"--output_dir={out}",
            ]
        )
    checkpoints = [p for p in out.iterdir() if p.name.startswith("checkpoint-")]
    assert all(all_tensors_finite(p) for p in checkpoints)


class InfiniteWeightAtStep2(TrainerCallback):
    """An update that overflows a weight without a non-finite gradient (what a huge learning rate can do)."""

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:  # step 2's update
            with torch.no_grad():
                next(model.parameters())[0, 0] = float("inf")


def test_weights_that_are_not_finite_are_never_saved(tmp_path):
    tokenizer, rows = tiny_rows(16)
    args = tiny_config(
        tmp_path, max_steps=4, logging_steps=10, per_device_train_batch_size=2, save_strategy="steps", save_steps=1
    )
    trainer = SimPOTrainer(
        TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=[InfiniteWeightAtStep2()]
    )
    name = next(trainer.model.named_parameters())[0]
    with pytest.raises(
        NonFiniteError,
        match=rf"Not saving checkpoint-2: 1 weight tensors hold NaN or infinite values"
        rf" \({name}\).*resumes from {tmp_path / 'checkpoint-1'}",
    ):
        trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-1"]


def test_the_gradient_check_reads_every_gradient_and_leaves_fp16_overflows_to_the_scaler():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model(torch.ones(2, 3)).sum().backward()
    guard, state = FiniteUpdates(), SimpleNamespace(global_step=6)
    args = SimpleNamespace(fp16=False, output_dir="/nonexistent")
    guard.on_pre_optimizer_step(args, state, TrainerControl(), model=model)  # finite: nothing happens
    model[1].bias.grad[0] = float("nan")
    with pytest.raises(NonFiniteError, match="Non-finite gradient norm at step 7.*no checkpoint in /nonexistent"):
        guard.on_pre_optimizer_step(args, state, TrainerControl(), model=model)
    guard.on_pre_optimizer_step(SimpleNamespace(fp16=True, output_dir="/x"), state, TrainerControl(), model=model)
