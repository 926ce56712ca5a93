"""Tiny in-process runs of both recipes and what tests share about them: the probes and comparisons the resume
tests use (tests/run/), a finished tiny run (2 training steps of the tiny config, as the README's quick start makes
it, without evaluation or checkpoints), and a stand-in backend whose first answer fills the context."""

import json
import os
import signal

import torch
from conftest import REPO, TINY_DATA, TINY_MODEL
from safetensors.torch import load_file
from transformers import TrainerCallback

SIMPO = [
    "training_configs/tiny-simpo-cpu.yaml",
    "--report_to=none",
    "--do_eval=false",
    "--eval_strategy=no",
    "--eval_on_start=false",
    "--logging_steps=1",
]
SFT = ["training_configs/tiny-sft-cpu.yaml", *SIMPO[1:]]
SAVE_EVERY_2 = ["--save_strategy=steps", "--save_steps=2"]


def simpo_main(argv, callbacks=None):
    from simpo.train.recipe import train_main

    return train_main(argv, callbacks)


def sft_main(argv, callbacks=None):
    from simpo.sft.recipe import sft_main

    return sft_main(argv, callbacks)


def cli(main):
    """The recipe as its command runs it: a refusal exits 2 printing its message (helpers/refusals.py)."""
    from simpo.run.commands import report_input_errors

    return report_input_errors("simpo-x")(main)


def logged_rates(out) -> dict[int, float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}


def assert_same_weights(a, b) -> None:
    expected, got = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


class FirstRates(TrainerCallback):
    """Trains its first steps at given learning rates (those another run logged), then leaves the schedule alone:
    the independent way to get the trajectory of a run whose settings changed at that step. (The Trainer logs the
    schedule's rate, so those first steps log the schedule's, not the rates they trained at.)"""

    def __init__(self, rates: dict[int, float]):
        self.rates = rates

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step + 1 in self.rates:
            for group in optimizer.param_groups:
                group["lr"] = self.rates[state.global_step + 1]


class SignalAt(TrainerCallback):
    """Sends this process `signum` while step `step` runs (as a scheduler would)."""

    def __init__(self, step: int, signum=signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)


def train_tiny(output_dir, model: str = TINY_MODEL, *flags: str) -> str:
    from simpo.train.recipe import train_main

    train_main(
        [
            os.path.join(REPO, "training_configs", "tiny-simpo-cpu.yaml"),
            f"--output_dir={output_dir}",
            f"--model_name_or_path={model}",
            f"--dataset_mixer={{{TINY_DATA}: 1.0}}",
            "--max_steps=2",
            "--report_to=none",
            "--eval_strategy=no",
            "--eval_on_start=false",
            "--do_eval=false",
            "--save_strategy=no",
            *flags,
        ]
    )
    return str(output_dir)


class Rambler:
    """simpo-answer's backend stand-in: 400 words for a first question that names `marker` (a first answer that
    fills a 512-position context), `short` for every other prompt."""

    def __init__(self, tokenizer, marker: str, short: str):
        self.tokenizer, self.marker, self.short = tokenizer, marker, short

    def set_sampling(self, temperature, top_p, max_tokens):
        pass

    def generate(self, prompts, batch_seed, row_seeds):
        texts = [self.tokenizer.decode(ids) for ids in prompts]
        return ["word " * 400 if self.marker in text and "word" not in text else self.short for text in texts]
