"""generate_during_eval: after each evaluation, the model's greedy replies to the first few eval prompts, beside
the pair's chosen and rejected replies, so a reader sees what the rewards mean (output_dir/eval_samples.jsonl)."""

import json
import os

import torch
from transformers import TrainerCallback

NUM_PROMPTS = 4
MAX_NEW_TOKENS = 64


class EvalSamples(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_evaluate(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.eval_dataset is None:
            return
        # Every process generates (ZeRO-3 gathers weights collectively); the main process writes.
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        rows = trainer.eval_dataset.select(range(min(NUM_PROMPTS, len(trainer.eval_dataset))))
        records = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for row in rows:
                n = row["prompt_length"]
                prompt = torch.tensor([row["chosen_input_ids"][:n]], device=trainer.args.device)
                output = model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                )
                decode = tokenizer.decode  # special tokens kept: the reader sees exactly what the model sees
                records.append(
                    {
                        "step": state.global_step,
                        "prompt": decode(row["chosen_input_ids"][:n]),
                        "generated": decode(output[0, n:].tolist()),
                        "chosen": decode(row["chosen_input_ids"][n:]),
                        "rejected": decode(row["rejected_input_ids"][n:]),
                    }
                )
        model.train(was_training)
        if trainer.accelerator.is_main_process:
            with open(os.path.join(args.output_dir, "eval_samples.jsonl"), "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
