"""A tiny Llama that vLLM's CPU build can run: assets/tiny-llama's tokenizer, chat template, generation config and
sizes, with 2 attention heads of 32 instead of 4 of 16 (vLLM's CPU attention supports head sizes of 32 and up).
Built at test time (a few hundred kB, deterministic for a torch version), like scripts/build_tiny_paper.py's model.

Two changes make it a fair test of decoding, which the shipped random model is not:
- initializer_range 0.1 (not 0.02) and an output layer of its own: greedy decoding then has clear winners and
  varied text, where the shipped model repeats one token;
- its output row for <|eot_id|> is 1.1 x the row of a token it emits mid-reply (never in its first four tokens
  on the probe prompts), so some replies end at <|eot_id|> and others run to the token limit, as a trained model's
  do: stop tokens matter."""

from collections import Counter

import torch
from conftest import TINY_MODEL
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

PROBES = ["Name a colour.", "What is 2+2?", "Write a poem about a kettle.", "hi", "Explain TCP.", "why"]


def build(folder: str, seed: int = 0) -> str:
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    config = LlamaConfig.from_pretrained(TINY_MODEL)
    config.num_attention_heads, config.num_key_value_heads, config.head_dim = 2, 1, 32
    config.initializer_range, config.tie_word_embeddings = 0.1, False
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    replies = []
    for text in PROBES:
        turns = [{"role": "user", "content": text}]
        ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, return_dict=False)
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=16, eos_token_id=eot)
        replies.append(out[0, len(ids) :].tolist())
    early = {token for reply in replies for token in reply[:4]}
    (mid_reply, _), *_ = Counter(t for reply in replies for t in reply[4:] if t not in early | {eot}).most_common(1)
    with torch.no_grad():
        model.lm_head.weight[eot] = 1.1 * model.lm_head.weight[mid_reply]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    GenerationConfig.from_pretrained(TINY_MODEL).save_pretrained(folder)
    return folder
