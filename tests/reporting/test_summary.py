"""What a run says at its start: a launch too short to reach logging_steps is told so before it trains."""

import os
import re

import pytest
from conftest import REPO, TINY_MODEL, tiny_config, tiny_rows
from transformers import TrainerState

from simpo.reporting.summary import short_run_warning
from simpo.train.config import SimPOConfig
from simpo.train.trainer import SimPOTrainer


@pytest.mark.parametrize(
    "max_steps,global_step,every,warned",
    [(4, 0, 5, True), (5, 0, 5, False), (12, 0, 5, False), (9, 6, 5, True), (11, 6, 5, False), (3, 0, 1, False)],
)
def test_a_launch_that_reaches_no_logging_step_is_warned(tmp_path, max_steps, global_step, every, warned):
    args = SimPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", logging_steps=every)
    state = TrainerState(max_steps=max_steps, global_step=global_step, logging_steps=every)
    warning = short_run_warning(args, state)
    assert (warning is not None) == warned
    if warned:
        assert f"trains {max_steps - global_step} optimizer step(s)" in warning and f"logs every {every}" in warning


def test_the_trainer_warns_at_the_start_of_a_short_run(tmp_path, caplog):
    tokenizer, rows = tiny_rows(8)
    args = tiny_config(tmp_path, max_steps=2, logging_steps=5, per_device_train_batch_size=4)
    trainer = SimPOTrainer(TINY_MODEL, args=args, train_dataset=rows, processing_class=tokenizer)
    with caplog.at_level("WARNING"):
        trainer.train()
    assert "This launch trains 2 optimizer step(s) (to step 2) but logs every 5" in caplog.text
    assert not [h for h in trainer.state.log_history if "loss" in h]  # what it warned of


def test_the_onpolicy_demo_logs_its_steps():
    """docs/onpolicy-data.md's tiny demo trains 4 steps: its command must log at least that often."""
    text = open(os.path.join(REPO, "docs", "onpolicy-data.md")).read()
    command = text[text.index('simpo-train training_configs/tiny-simpo-cpu.yaml --dataset_mixer="{outputs/onpolicy') :]
    command = command[: command.index("```")]
    assert int(re.search(r"--logging_steps=(\d+)", command).group(1)) <= 4
