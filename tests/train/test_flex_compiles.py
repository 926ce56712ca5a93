"""FlexAttention without recompiles: with flex, prefix-shared rows are padded to a multiple of 128
(FLEX_ROW_MULTIPLE), so batches of every length reach the compiled kernel in a few shapes. Counted here with
torch's dynamo counters over 20 batches of different lengths, under the strictest setting (dynamic=False: every new
shape a new graph, as transformers compiled flex for training on torch 2.6), with the eager backend (the count is
dynamo's; inductor's C++ build would take minutes on a CPU)."""

import random

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.integrations import flex_attention as hf_flex

from simpo.train.layouts.shared_prefix import FLEX_ROW_MULTIPLE, SharedPrefixLayout

MAX_GRAPHS = 3  # the widths 128 and 256 this data reaches, plus one spare


def pair(rng: random.Random, prompt: int, chosen: int, rejected: int) -> dict:
    tokens = lambda n: [rng.randrange(1, 64) for _ in range(n)]
    p = tokens(prompt)
    return {
        "chosen_input_ids": p + tokens(chosen),
        "chosen_labels": [-100] * prompt + tokens(chosen),
        "rejected_input_ids": p + tokens(rejected),
        "rejected_labels": [-100] * prompt + tokens(rejected),
    }


@pytest.fixture
def static_flex_compile(monkeypatch):
    """transformers' flex compile, made static and run on dynamo's eager backend; fresh caches and counters."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, dynamic=False, backend="eager"))
    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "_instance", None)
    monkeypatch.setattr(hf_flex.WrappedFlexAttention, "_is_flex_compiled", False)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("padding_free", [False])  # padding-free rows take the same width rule
def test_twenty_batch_lengths_compile_flex_a_few_times(static_flex_compile, padding_free):
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="flex_attention")
    layout = SharedPrefixLayout(0, config=model.config, padding_free=padding_free)
    rng = random.Random(0)
    widths, lengths = set(), set()
    with torch.no_grad():
        for _ in range(20):
            features = [pair(rng, rng.randrange(2, 40), rng.randrange(1, 50), rng.randrange(1, 50)) for _ in range(3)]
            batch = layout(features)
            lengths.add(int(batch["attention_mask"].sum(1).max()))
            widths.add(batch["input_ids"].shape[1])
            model(**layout.model_inputs(batch))
    assert len(lengths) >= 12  # the batches really differ in length
    assert all(w % FLEX_ROW_MULTIPLE == 0 for w in widths) and len(widths) <= 2
    assert 1 <= counters["stats"]["unique_graphs"] <= MAX_GRAPHS, dict(counters["stats"])
