"""Build assets/tiny-reward: a tiny random-init LlamaForSequenceClassification (one output, the score) with the
tiny Llama's tokenizer and chat template, the reward model of the offline on-policy demo and its tests.

Its scores are random but deterministic: it exercises the pipeline (generate -> annotate -> binarise -> train), it
does not judge anything. Writes the same bytes on every run.

Usage (from the repo root): python scripts/build_tiny_reward.py
"""

import shutil
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

ROOT = Path(__file__).resolve().parent.parent
POLICY_DIR, REWARD_DIR = ROOT / "assets" / "tiny-llama", ROOT / "assets" / "tiny-reward"
SEED = 7


def main() -> None:
    config = LlamaConfig.from_pretrained(POLICY_DIR)
    config.num_labels = 1
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = 32, 64, 1
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 16
    config.architectures = ["LlamaForSequenceClassification"]
    torch.manual_seed(SEED)
    model = LlamaForSequenceClassification(config)
    shutil.rmtree(REWARD_DIR, ignore_errors=True)
    model.save_pretrained(REWARD_DIR)
    AutoTokenizer.from_pretrained(POLICY_DIR).save_pretrained(REWARD_DIR)


if __name__ == "__main__":
    main()
