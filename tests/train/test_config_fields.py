"""Every config key reaches the code that uses it, or is refused; the keys fixed for that each show their effect."""

import dataclasses
import json

import pytest
from config_fields import SOURCES, unread_fields
from transformers import TrainerCallback

from simpo.config.arguments import DataArguments, ModelArguments
from simpo.train.config import SimPOConfig
from simpo.train.recipe import train_main


@pytest.mark.parametrize("cls", [ModelArguments, DataArguments, SimPOConfig])
def test_every_field_is_read_by_simpo_or_inherited_from_training_arguments(cls):
    """An unread key would let a user believe they changed something."""
    assert unread_fields(cls) == []


def test_the_field_walk_catches_an_unread_field():
    @dataclasses.dataclass
    class WithAnUnreadKey(DataArguments):
        truncation_side: str = "left"

    assert unread_fields(WithAnUnreadKey) == ["truncation_side"]


def test_gamma_is_beta_times_the_ratio_and_what_the_summary_prints():
    args = SimPOConfig(output_dir="/tmp/simpo-test", beta=2.5, gamma_beta_ratio=0.4, report_to=[])
    assert args.gamma == pytest.approx(1.0)
    # one owner: the property
    assert "args.gamma_beta_ratio" not in SOURCES["train/trainer.py"] + SOURCES["train/loss.py"]


class ModelConfigProbe(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.config = model.config


def test_model_init_kwargs_from_the_yaml_reach_from_pretrained(tmp_path):
    probe = ModelConfigProbe()
    train_main(
        [
            "training_configs/tiny-simpo-cpu.yaml",
            f"--output_dir={tmp_path}",
            "--report_to=none",
            "--max_steps=1",
            "--eval_strategy=no",
            "--do_eval=false",
            "--eval_on_start=false",
            "--model_init_kwargs={max_position_embeddings: 4096}",
        ],
        callbacks=[probe],
    )
    assert probe.config.max_position_embeddings == 4096
    assert json.loads((tmp_path / "config.json").read_text())["max_position_embeddings"] == 4096


def test_model_init_kwargs_that_a_key_sets_are_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="model_init_kwargs sets 'dtype', which the config key torch_dtype sets: use"):
        train_main(
            [
                "training_configs/tiny-simpo-cpu.yaml",
                f"--output_dir={tmp_path}",
                "--model_init_kwargs={dtype: bfloat16}",
            ]
        )
