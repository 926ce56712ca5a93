"""Build the tiny paper demo's data (shipped) and its model (built at run time, in seconds).

The task: reverse a short lowercase word (prompt "kbtw", answer "wtbk"), an answer a function can check exactly
(`simpo.pipeline.rewards:exact_match` against the row's `answer`). The SFT demonstrations carry a systematic error:
in a share MISTAKE_SHARE of them the reply's last two letters are swapped ("wtkb"). SFT learns the task and the
mistake (more than half the demonstrations make it, so greedy answers make it too); SimPO on the SFT model's own
samples, scored by the function, learns to prefer the correct ones.

Writes, deterministically (same bytes on every run), data/tiny-paper/:
  sft/{train,test}.jsonl      demonstrations (prompt, prompt_id, messages: user + assistant turn)
  prompts/{train,test}.jsonl  preference prompts for on-policy sampling (prompt, prompt_id, answer)
  heldout.jsonl               evaluation prompts (prompt, prompt_id, answer)
No word occurs in two of these files (or twice in one).

`build_model(folder, seed)` writes a ~1M-parameter Llama (random init from `seed`) with a character-level tokenizer
(byte-level alphabet, no merges) and a Llama-3-style chat template, as assets/tiny-llama's.

Usage (from the repo root): python scripts/build_tiny_paper.py            (the data)
                            python scripts/build_tiny_paper.py --model FOLDER [--model_seed N]
"""

import argparse
import hashlib
import json
import random
import shutil
import string
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data" / "tiny-paper"
SEED = 2024
MISTAKE_SHARE = 0.7
LENGTHS = (3, 4, 5)
SIZES = {"sft/train": 4000, "sft/test": 100, "prompts/train": 1200, "prompts/test": 100, "heldout": 300}
BOS, EOS = "<|begin_of_text|>", "<|eot_id|>"
ROLES = ["<|user|>", "<|assistant|>", "<|system|>"]  # one token per role header: short sequences, fast training
CHAT_TEMPLATE = (  # bos first, then <|ROLE|>CONTENT<|eot_id|> per turn (a reply renders alone as after its prompt)
    "{% for message in messages %}"
    "{% set content = '<|' + message['role'] + '|>' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def prompt_of(word: str) -> str:
    return word  # the word alone: short sequences train fast (an instruction would be the same tokens every time)


def answer_of(word: str) -> str:
    return word[::-1]


def mistaken(word: str) -> str:
    """The systematic error: the reversal with its last two letters swapped."""
    right = word[::-1]
    return right[:-2] + right[-1] + right[-2]


def words(rng: random.Random, n: int) -> list[str]:
    """n distinct words whose first two letters differ (so the mistake always changes the answer)."""
    seen, out = set(), []
    while len(out) < n:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.choice(LENGTHS)))
        if word[0] != word[1] and word not in seen:
            seen.add(word)
            out.append(word)
    return out


def build_data(rng: random.Random) -> dict[str, list[dict]]:
    pool = words(rng, sum(SIZES.values()))
    files, start = {}, 0
    for name, size in SIZES.items():
        files[name], start = pool[start : start + size], start + size
    out = {}
    for name, chunk in files.items():
        rows = []
        for word in chunk:
            prompt = prompt_of(word)
            row = {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest()[:16]}
            if name.startswith("sft/"):
                reply = mistaken(word) if rng.random() < MISTAKE_SHARE else answer_of(word)
                row["messages"] = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
            else:
                row["answer"] = answer_of(word)
            rows.append(row)
        out[name] = rows
    return out


def write_data(folder: Path = DATA_DIR) -> dict[str, list[dict]]:
    data = build_data(random.Random(SEED))
    for name, rows in data.items():
        path = folder / f"{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return data


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, *ROLES]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per character
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    # Like Llama-3: add_special_tokens=True puts BOS first; add_special_tokens=False adds nothing.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=ROLES,
        chat_template=CHAT_TEMPLATE,
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )


def build_model(folder, seed: int = 0) -> int:
    """A random-init ~1M-parameter Llama and its tokenizer into `folder` (deterministic for a seed); its size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return model.num_parameters()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="build the model into this folder (instead of the data)")
    parser.add_argument("--model_seed", type=int, default=0)
    args = parser.parse_args()
    if args.model:
        print(f"{build_model(args.model, args.model_seed):,} parameters -> {args.model}")
        return
    data = write_data()
    print(", ".join(f"{name}: {len(rows)}" for name, rows in data.items()), "->", DATA_DIR.relative_to(ROOT))


if __name__ == "__main__":
    main()
