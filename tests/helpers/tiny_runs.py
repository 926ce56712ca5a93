"""A finished tiny run (2 training steps of the tiny config, as the README's quick start makes it, without
evaluation or checkpoints) and a stand-in backend whose first answer fills the context."""

import os

from conftest import REPO, TINY_DATA, TINY_MODEL


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
