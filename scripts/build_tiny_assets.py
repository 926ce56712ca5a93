"""Build the offline demo assets: a tiny preference dataset and a tiny random-init Llama that can learn it.

Writes, deterministically (same bytes on every run):
  data/tiny-prefs/{train,test}.jsonl  pairs in UltraFeedback message format (prompt, chosen, rejected, prompt_id)
  assets/tiny-llama/                  LlamaForCausalLM (float32 safetensors) + byte-level BPE tokenizer with
                                      Llama-3 special tokens and chat template; no pad token (the pipeline uses eos)

Why: tests, CI and the quick-start run SimPO end to end with no hub access, in well under a minute on CPU.
The preference is stylistic and learnable by a tiny model: chosen replies are polite and about the prompt's
topic, rejected replies are rude. Both sides draw their length from the same range, so length gives nothing
away, and test prompts pair topics that never appear together in train, so accuracy measures generalisation.

Usage (from the repo root): python scripts/build_tiny_assets.py
"""

import hashlib
import json
import random
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR, DATA_DIR = ROOT / "assets" / "tiny-llama", ROOT / "data" / "tiny-prefs"
SEED = 1234  # data
MODEL_SEED = 4  # weights; picked so the untrained model is at chance (~0.5) on the test pairs
BOS, EOS, START, END = "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"
CHAT_TEMPLATE = (  # Llama-3's: bos first, then <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

NOUNS = (
    "apple bread river garden bicycle window kitten laptop guitar kettle jacket candle mountain teacup "
    "notebook pillow ladder camera violin blanket lantern carpet rocket parrot tomato pencil bridge cookie "
    "engine forest"
).split()
ADJECTIVES = "old red tiny noisy broken shiny wooden muddy new quiet".split()
PROMPTS = [
    "{x} or {y} please",
    "compare the {x} and {y}",
    "how do i fix my {a} {x} and my {y}",
    "tell me about the {x} and the {y}",
    "what should i do with a {a} {x} and a {y}",
    "can you explain why my {x} is {a} like a {y}",
    "please help me choose a {x} or a {y}",
    "is a {a} {x} better than a {y}",
    "write a short note about my {x} near the {y}",
    "why does the {x} smell like a {a} {y} today",
]
GOOD = [
    "sure",
    "happy to help",
    "great question",
    "thank you for asking",
    "of course",
    "gladly",
    "here is a clear answer",
    "i hope this helps",
    "kind regards",
    "let me explain",
    "good luck",
    "you are welcome",
    "with pleasure",
    "thanks",
]
BAD = [
    "no",
    "whatever",
    "not my problem",
    "figure it out yourself",
    "boring question",
    "go away",
    "ugh",
    "i do not care",
    "stop asking",
    "who cares",
    "that is dumb",
    "leave me alone",
    "meh",
    "seriously",
]


def reply(rng: random.Random, phrases: list[str], topic: list[str]) -> str:
    """About 5-20 words: whole style phrases from `phrases`, with topic nouns mixed in, until a length drawn
    the same way for chosen and rejected is reached."""
    length, words = rng.randint(5, 18), []
    while len(words) < length:
        words += rng.choice(phrases).split() if rng.random() < 0.7 else ["the", rng.choice(topic)]
    return " ".join(words[:20])


def make_rows(rng: random.Random, topics: list[tuple[str, str]], unseen: set[str] = frozenset()) -> list[dict]:
    """One pair per topic (x, y); replies listed in `unseen` are drawn again."""
    rows = []
    for x, y in topics:
        prompt = rng.choice(PROMPTS).format(a=rng.choice(ADJECTIVES), x=x, y=y)
        other = rng.sample([n for n in NOUNS if n not in (x, y)], 2)
        chosen = reply(rng, GOOD, [x, y])
        while chosen in unseen:
            chosen = reply(rng, GOOD, [x, y])
        rejected = reply(rng, BAD, [x, y] if rng.random() < 0.5 else other)
        while rejected in unseen:
            rejected = reply(rng, BAD, [x, y] if rng.random() < 0.5 else other)
        user = {"role": "user", "content": prompt}
        rows.append(
            {
                "prompt": prompt,
                "chosen": [user, {"role": "assistant", "content": chosen}],
                "rejected": [user, {"role": "assistant", "content": rejected}],
                "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
            }
        )
    return rows


def build_data(rng: random.Random) -> dict[str, list[dict]]:
    pairs = [(x, y) for x in NOUNS for y in NOUNS if x != y]  # 870 ordered topic pairs
    rng.shuffle(pairs)
    test_pairs = pairs[:100]  # these topic combinations (either order) never occur in train
    held = {frozenset(p) for p in test_pairs}
    train = make_rows(rng, [p for p in pairs[100:] if frozenset(p) not in held][:600])
    seen = {r[side][1]["content"] for r in train for side in ("chosen", "rejected")}
    return {"train": train, "test": make_rows(rng, test_pairs, seen)}  # test replies are new strings too


def build_tokenizer(splits: dict[str, list[dict]]) -> PreTrainedTokenizerFast:
    texts = ["user", "assistant", "system"] * 100  # role names become single tokens
    texts += [m["content"] for rows in splits.values() for r in rows for m in r["chosen"] + r["rejected"][1:]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=2,
        special_tokens=[BOS, EOS, START, END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # Like Llama-3: add_special_tokens=True puts BOS first; add_special_tokens=False adds nothing.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[START, END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    torch.manual_seed(MODEL_SEED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        dtype="float32",
    )
    return LlamaForCausalLM(config).to(torch.float32).eval()


def main() -> None:
    splits = build_data(random.Random(SEED))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(DATA_DIR / f"{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tokenizer = build_tokenizer(splits)
    model = build_model(tokenizer)
    shutil.rmtree(MODEL_DIR, ignore_errors=True)  # no stale files from other transformers versions
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    tokenizer.save_pretrained(MODEL_DIR)
    print(
        f"{len(splits['train'])} train / {len(splits['test'])} test pairs -> {DATA_DIR.relative_to(ROOT)}; "
        f"vocab {len(tokenizer)}, {model.num_parameters():,} params -> {MODEL_DIR.relative_to(ROOT)}"
    )


if __name__ == "__main__":
    main()
