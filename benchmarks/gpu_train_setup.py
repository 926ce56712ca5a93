"""What every run of benchmarks/gpu_train.py builds the same way: the tokenizer, the synthetic pairs, the config
(through simpo's parser) and the random Llama.

The data is token ids written as words: a WordLevel tokenizer maps "t<i>" to id i, so prompt + response tokenises to
exactly the drawn ids in both trainers, and the vocabulary (so the LM head) has Llama 3's size without the Hub.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPECIAL_TOKENS = 256  # as in Llama 3: the last 256 ids; BOS, EOS and pad are three of them
MODEL_KEYS = ("torch_dtype", "attn_implementation")  # the ModelArguments a model built from a config can take


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = vocab_size - SPECIAL_TOKENS
    vocab = {f"t{i}": i for i in range(words)} | {f"<|special_{i}|>": words + i for i in range(SPECIAL_TOKENS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|special_2|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|special_0|>", eos_token="<|special_1|>", pad_token="<|special_4|>"
    )


def synthetic_pairs(num_pairs: int, lengths: dict, vocab_size: int, seed: int) -> list[dict]:
    """Prompt, chosen and rejected strings with lognormal token counts ([median, sigma]), capped at lengths["max"].
    Drawn pair by pair from one generator, so the first k pairs are the same for any num_pairs >= k."""
    rng = np.random.default_rng(seed)
    words = vocab_size - SPECIAL_TOKENS
    draw = lambda median, sigma: int(np.clip(rng.lognormal(np.log(median), sigma), 1, lengths["max"]))
    text = lambda n: " ".join(f"t{i}" for i in rng.integers(0, words, n))
    pairs = []
    for _ in range(num_pairs):
        prompt = text(draw(*lengths["prompt"]))
        # Responses start with a space: prompt + response tokenises to the prompt's ids, then the response's.
        pairs.append(
            {
                "prompt": prompt,
                "chosen": " " + text(draw(*lengths["response"])),
                "rejected": " " + text(draw(*lengths["response"])),
            }
        )
    return pairs


def token_counts(pair: dict) -> tuple[int, int, int]:
    """(real tokens of the pair as the plain layout runs it, chosen response tokens, longer sequence): each side is
    BOS + prompt + response + EOS in both trainers."""
    prompt, chosen, rejected = (len(pair[k].split()) for k in ("prompt", "chosen", "rejected"))
    return 2 * (prompt + 1) + chosen + rejected + 2, chosen + 1, prompt + max(chosen, rejected) + 2


def parse_config(keys: dict, workdir: Path):
    """simpo's parser on the keys (through a YAML file, as a run reads them): unknown keys and bad values are errors,
    and so are keys this benchmark would ignore (data keys, and model keys a model built from a config cannot take)."""
    import yaml

    from simpo.config.arguments import DataArguments, ModelArguments
    from simpo.config.parser import parse_args
    from simpo.train.config import SIMPO_ARGUMENTS

    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(keys))
    model_args, data_args, args = parse_args([str(path)], SIMPO_ARGUMENTS)
    ignored = [
        f.name
        for f in dataclasses.fields(ModelArguments)
        if f.name not in MODEL_KEYS and getattr(model_args, f.name) != getattr(ModelArguments(), f.name)
    ]
    ignored += [
        f.name
        for f in dataclasses.fields(DataArguments)
        if getattr(data_args, f.name) != getattr(DataArguments(), f.name)
    ]
    if ignored:
        raise ValueError(f"gpu_train builds its own model and data: the keys {ignored} would have no effect here.")
    return model_args, args


def data_stats(pairs: list[dict]) -> dict:
    lengths = {k: np.array([len(p[k].split()) for p in pairs]) for k in ("prompt", "chosen", "rejected")}
    responses = np.concatenate([lengths["chosen"], lengths["rejected"]])
    describe = lambda x: {"mean": round(float(x.mean()), 1), "median": float(np.median(x)), "max": int(x.max())}
    return {
        "pairs": len(pairs),
        "prompt_tokens": describe(lengths["prompt"]),
        "response_tokens": describe(responses),
        "real_tokens_per_pair": round(float(np.mean([token_counts(p)[0] for p in pairs])), 1),
    }


def build_model(shape: dict, tokenizer, model_args, training_args, device: str):
    """Random-init Llama of the given shape, seeded (every process builds the same weights), built on the device."""
    from simpo.models.loading import model_init_kwargs, resolve_dtype

    kwargs = model_init_kwargs(model_args, training_args)
    config = LlamaConfig(
        **shape,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=kwargs["use_cache"],
    )
    torch.manual_seed(0)
    with torch.device(device):  # a billion weights initialise in a second on a GPU, in a minute on a CPU
        return AutoModelForCausalLM.from_config(
            config, attn_implementation=kwargs.get("attn_implementation"), dtype=resolve_dtype(kwargs.get("dtype"))
        )
