"""Elastic resume's arithmetic and refusals (simpo/run/elastic.py), without launching anything; the launches that
resume on another process count are in tests/train/test_elastic_resume.py."""

import contextlib
import json
import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from safetensors.torch import save_file

from simpo.run.elastic import (
    LAYOUT_FILE,
    Layout,
    ResumePlan,
    adapt_to_checkpoint,
    checkpoint_layout,
    epoch_tail_steps,
    write_layout,
)


def launch_args(world_size=1, per_device=16, accumulation=1, allow=False):
    return SimpleNamespace(
        world_size=world_size,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        allow_global_batch_change=allow,
        deepspeed=None,
        main_process_first=lambda **kwargs: contextlib.nullcontext(),
    )


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint written by 2 processes of 16 pairs with accumulation 3: a global batch of 96."""
    path = tmp_path / "checkpoint-4"
    path.mkdir()
    write_layout(str(path), Layout(2, 16, 3))
    return path


def test_the_record_is_written_and_read_back(checkpoint):
    assert json.loads((checkpoint / LAYOUT_FILE).read_text()) == {
        "processes": 2,
        "per_device_train_batch_size": 16,
        "gradient_accumulation_steps": 3,
        "global_batch": 96,
    }
    assert checkpoint_layout(str(checkpoint)) == Layout(2, 16, 3)


@pytest.mark.parametrize(("processes", "accumulation"), [(1, 6), (2, 3), (3, 2), (6, 1)])
def test_the_accumulation_is_recomputed_to_keep_the_global_batch(checkpoint, processes, accumulation):
    args = launch_args(world_size=processes, accumulation=3)  # the same command, another process count
    plan = adapt_to_checkpoint(args, str(checkpoint))
    assert args.gradient_accumulation_steps == accumulation
    assert 16 * processes * args.gradient_accumulation_steps == 96
    if processes == 2:
        assert plan is None  # the launch that wrote it: the Trainer's own resume
    else:
        assert plan.note == f"resumed from checkpoint-4 written by 2 processes, now {processes}"
        assert plan.universal is None  # not a DeepSpeed checkpoint


def test_a_global_batch_the_new_process_count_cannot_keep_is_refused_with_the_arithmetic(checkpoint):
    with pytest.raises(ValueError) as error:
        adapt_to_checkpoint(launch_args(world_size=4, accumulation=3), str(checkpoint))
    message = str(error.value)
    assert "16 per device x 2 process(es) x 3 accumulation = 96" in message
    assert "gradient_accumulation_steps = 96 / (16 x 4) = 1.5, not a whole number" in message
    assert "allow_global_batch_change: true" in message


@pytest.mark.parametrize(("per_device", "accumulation"), [(16, 2), (8, 3)])
def test_an_explicit_other_global_batch_is_refused_unless_allowed(checkpoint, caplog, per_device, accumulation):
    args = launch_args(world_size=2, per_device=per_device, accumulation=accumulation)
    with pytest.raises(ValueError, match=r"this launch has .* = (64|48)\. A different global batch"):
        adapt_to_checkpoint(args, str(checkpoint))
    allowed = launch_args(world_size=2, per_device=per_device, accumulation=accumulation, allow=True)
    with caplog.at_level(logging.WARNING):
        adapt_to_checkpoint(allowed, str(checkpoint))
    assert allowed.gradient_accumulation_steps == accumulation and "allow_global_batch_change" in caplog.text


def test_an_accumulation_given_for_the_new_process_count_is_kept(checkpoint):
    args = launch_args(world_size=1, accumulation=6)  # the user did the arithmetic
    assert adapt_to_checkpoint(args, str(checkpoint)).now == Layout(1, 16, 6)


def test_a_checkpoint_without_the_record_resumes_on_its_own_process_count_only(tmp_path):
    old = tmp_path / "checkpoint-2"
    old.mkdir()
    for rank in (0, 1):
        (old / f"rng_state_{rank}.pth").write_bytes(b"")
    args = launch_args(world_size=2)
    assert adapt_to_checkpoint(args, str(old)) is None and args.gradient_accumulation_steps == 1
    with pytest.raises(ValueError, match=rf"has no {LAYOUT_FILE} .* written by 2 process\(es\) .* not 1"):
        adapt_to_checkpoint(launch_args(world_size=1), str(old))


def test_steps_that_end_an_epoch_with_a_partial_batch_are_named():
    plan = ResumePlan("checkpoint-3", Layout(2, 16, 1), Layout(1, 16, 2))
    # 600 pairs / 32 per step = 18.75: 19 steps per epoch, the 19th partial.
    assert epoch_tail_steps(plan, resumed_step=3, max_steps=40, train_pairs=600) == [19, 38]
    assert epoch_tail_steps(plan, resumed_step=3, max_steps=12, train_pairs=600) == []
    assert epoch_tail_steps(plan, resumed_step=3, max_steps=40, train_pairs=640) == []


def test_an_other_global_batch_is_refused_before_the_data_or_model_loads(tmp_path, caplog):
    """The recipe refuses in start_run: no data mixed, no model loaded."""
    from simpo.train.recipe import train_main

    out = tmp_path / "run"
    checkpoint = out / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    save_file({"weight": torch.zeros(1)}, checkpoint / "model.safetensors")  # a checkpoint that verifies
    write_layout(str(checkpoint), Layout(2, 16, 1))
    with caplog.at_level(logging.INFO), pytest.raises(ValueError, match="this launch has 8 per device x 1 process"):
        train_main(
            [
                f"{REPO}/training_configs/tiny-simpo-cpu.yaml",
                f"--output_dir={out}",
                "--report_to=none",
                "--per_device_train_batch_size=8",
            ]
        )
    assert "Using 600 rows" not in caplog.text


def test_a_step_count_deepspeeds_universal_load_shares_between_groups_is_counted_once_per_step():
    """DeepSpeed's universal ZeRO-3 load puts one `step` tensor in every group's Adam state; torch's Adam adds 1 per
    group in place, so with two groups a resumed run's bias correction counted 2 steps per step (the ZeRO-3 resume test
    drifted from the uninterrupted run by 1e-3 before this)."""
    import torch

    from simpo.run.elastic import unshare_adam_steps

    weights, norm = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    adam = torch.optim.AdamW([{"params": [weights]}, {"params": [norm], "weight_decay": 0.0}])
    shared = torch.tensor(2.0)  # as DeepSpeed's load_hp_checkpoint_state_from_checkpoint_dir_stage3 leaves it
    for p in (weights, norm):
        adam.state[p].update(step=shared, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    wrapped = SimpleNamespace(optimizer=SimpleNamespace(optimizer=adam))  # accelerate's wrapper, then DeepSpeed's
    assert unshare_adam_steps(wrapped) == 1
    weights.grad, norm.grad = torch.ones(3), torch.ones(2)
    adam.step()
    assert [adam.state[p]["step"].item() for p in (weights, norm)] == [3.0, 3.0]
    assert unshare_adam_steps(wrapped) == 0
