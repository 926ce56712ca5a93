"""Prefix sharing and padding-free packing must give the plain layout's numbers, pair for pair.

Exactness: per-sequence average log-probs, the SimPO loss and every parameter gradient match the plain layout's to 1e-5
(fp32) on tiny random Llama, Mistral (window shorter than the rows), Gemma-2 (eager, window, softcaps) and Qwen2.
"""

import copy
import logging
import random

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from simpo.data.tokenization import tokenize_row
from simpo.train.config import SimPOConfig
from simpo.train.layouts import choose_layout
from simpo.train.layouts.plain import PlainLayout
from simpo.train.layouts.shared_prefix import SharedPrefixLayout
from simpo.train.logps import plain_token_logps
from simpo.train.loss import average_logps, simpo_loss

PAD, IGNORE, VOCAB, WINDOW = 0, -100, 128, 8
TOL = 1e-5
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.2,
)  # a wide init makes attention far from uniform
CONFIGS = {
    "llama-sdpa": (LlamaConfig(**SIZES), "sdpa"),
    "llama-eager": (LlamaConfig(**SIZES), "eager"),
    "mistral": (MistralConfig(**SIZES, sliding_window=WINDOW), "sdpa"),
    "gemma2": (
        Gemma2Config(
            **SIZES, head_dim=8, sliding_window=WINDOW, attn_logit_softcapping=5.0, final_logit_softcapping=3.0
        ),
        "eager",
    ),
    "qwen2": (Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1), "sdpa"),
}


def tiny_model(name: str):
    config, implementation = CONFIGS[name]
    torch.manual_seed(0)  # a copy of the config: tests change the model's (its window, its kernel)
    return AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=implementation).float()


def pair(prompt: list[int], chosen: list[int], rejected: list[int], chosen_prompt: list[int] | None = None) -> dict:
    """A tokenised row; chosen_prompt differs from prompt when a merge moved the boundary on the chosen side."""
    chosen_prompt = prompt if chosen_prompt is None else chosen_prompt
    return {
        "chosen_input_ids": chosen_prompt + chosen,
        "chosen_labels": [IGNORE] * len(chosen_prompt) + chosen,
        "rejected_input_ids": prompt + rejected,
        "rejected_labels": [IGNORE] * len(prompt) + rejected,
        "prompt_length": len(chosen_prompt),
    }


def mixed_pairs() -> list[dict]:
    rng = random.Random(0)
    tokens = lambda n: [rng.randrange(1, VOCAB) for _ in range(n)]
    prompt = tokens(9)
    return [
        pair(tokens(5), tokens(12), tokens(7)),
        pair(tokens(30), tokens(3), tokens(20)),  # long prompt, rows far beyond the window
        pair(tokens(4), tokens(1), tokens(1)),  # one-token responses
        pair(prompt, tokens(6), tokens(9), chosen_prompt=prompt[:-1]),  # boundary merge: prompts differ by a token
        pair(prompt[:-1] + [5], tokens(4), tokens(3), chosen_prompt=prompt[:-1] + [6]),  # last prompt token differs
        pair(tokens(1), tokens(14), tokens(2)),  # only BOS in the prompt
    ]


def tokenized_pairs(make_tokenizer) -> list[dict]:
    """Rows from tokenize_row: a real boundary merge ("e" + "x"), and prompt and responses truncated."""
    tokenizer = make_tokenizer(["<s>", "</s>"], merges=[("e", "x")], bos="<s>", eos="</s>")
    rows = [
        {"prompt": "Tell me more", "chosen": "xylophones are great", "rejected": "no"},
        {
            "prompt": "A long prompt that will be cut at its start " * 2,
            "chosen": "sure, here it is",
            "rejected": "a response that is much too long to fit in max_length",
        },
    ]
    return [tokenize_row(r, tokenizer, max_length=48, max_prompt_length=20) for r in rows]


def shared(model, **kwargs) -> SharedPrefixLayout:
    return SharedPrefixLayout(PAD, config=model.config, **kwargs)


def logps(model, layout, batch: dict):
    return plain_token_logps(model, layout.model_inputs(batch), batch["score_index"], batch["score_labels"])[0]


def layout_results(model, layout, features: list[dict]):
    """(average log-probs [2B], SimPO loss, gradients) of one forward/backward on the layout's batch."""
    batch, num_pairs = layout(features), len(features)
    model.zero_grad()
    token_logps = logps(model, layout, batch)
    avg = average_logps(token_logps, batch["score_seq"], 2 * num_pairs)
    loss = simpo_loss(avg[:num_pairs], avg[num_pairs:], beta=2.0, gamma=0.5).mean()
    loss.backward()
    return avg.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


LAYOUTS = {
    "shared": dict(),
    "packed-one-row": dict(padding_free=True),
    "packed-capped": dict(padding_free=True, max_tokens_per_row=60),
}


@pytest.fixture
def features(make_tokenizer):
    return mixed_pairs() + tokenized_pairs(make_tokenizer)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_shared_and_packed_layouts_match_the_plain_layout(name, features):
    model = tiny_model(name)
    avg, loss, grads = layout_results(model, PlainLayout(PAD), features)
    assert torch.isfinite(avg).all() and avg.abs().min() > 0.1  # every sequence scored
    for layout, kwargs in LAYOUTS.items():
        batch = shared(model, **kwargs)(features)
        assert batch["response_lengths"].tolist() == PlainLayout(PAD)(features)["response_lengths"].tolist()
        avg2, loss2, grads2 = layout_results(model, shared(model, **kwargs), features)
        assert (avg2 - avg).abs().max() < TOL, (layout, (avg2 - avg).abs().max())
        assert (loss2 - loss).abs() < TOL, layout
        worst = max((grads2[n] - g).abs().max().item() for n, g in grads.items())
        assert worst < TOL, (layout, worst)


def test_mask_without_the_window_would_be_caught(features):
    """Guard against a vacuous check: the window matters on these rows, so a mask that forgot it would fail."""
    model = tiny_model("mistral")
    layout = shared(model)
    batch = layout(features)
    reference = average_logps(logps(model, layout, batch), batch["score_seq"], 2 * len(features))
    model.config.sliding_window = None
    no_window = average_logps(logps(model, layout, batch), batch["score_seq"], 2 * len(features))
    assert (no_window - reference).abs().max() > 1e-3


ROWS = [
    # pair 0: prompt [1, 5], chosen [6, 7], rejected [9]
    pair([1, 5], [6, 7], [9]),
    # pair 1: a boundary merge on the chosen side: only [1] is shared; rejected's prompt token 4 goes, unlabelled,
    # to its branch
    pair([1, 4], [3, 2], [2], chosen_prompt=[1]),
]


def test_collator_one_row_per_pair():
    batch = SharedPrefixLayout(PAD)(ROWS)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 9], [1, 3, 2, 4, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 1, 2]]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["branch_ids"].tolist() == [[0, 0, 1, 1, 2], [0, 1, 1, 2, 2]]
    # chosen 6 (from the last prompt slot 1), 7 (from 2); rejected 9 from the last prompt slot 1 as well
    assert batch["score_index"].tolist() == [1, 2, 1, 5 + 0, 5 + 1, 5 + 3]
    assert batch["score_labels"].tolist() == [6, 7, 9, 3, 2, 2]
    assert batch["score_seq"].tolist() == [0, 0, 2, 1, 1, 3]
    assert batch["response_lengths"].tolist() == [2, 2, 1, 1]


def test_collator_pads_with_own_segments_and_packs_without_padding():
    features = ROWS + [pair([1], [7], [8])]
    padded = SharedPrefixLayout(PAD)(features)
    assert padded["input_ids"][2].tolist() == [1, 7, 8, 0, 0]
    assert padded["attention_mask"][2].tolist() == [1, 1, 1, 0, 0]
    assert padded["segment_ids"][2].tolist() == [2, 2, 2, -4, -5]  # each pad alone in its segment
    packed = SharedPrefixLayout(PAD, padding_free=True)(features)
    assert packed["input_ids"].tolist() == [[1, 5, 6, 7, 9, 1, 3, 2, 4, 2, 1, 7, 8]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 2, 1, 2, 0, 1, 1]]
    assert packed["segment_ids"].tolist() == [[0] * 5 + [1] * 5 + [2] * 3]
    assert packed["branch_ids"].tolist() == [[0, 0, 1, 1, 2, 0, 1, 1, 2, 2, 0, 1, 2]]
    assert packed["score_index"].tolist() == [1, 2, 1, 5, 6, 8, 10, 10]
    assert packed["score_seq"].tolist() == [0, 0, 3, 1, 1, 4, 2, 5]
    capped = SharedPrefixLayout(PAD, padding_free=True, max_tokens_per_row=8)(features)
    assert capped["input_ids"].tolist() == [[1, 5, 6, 7, 9, 1, 7, 8], [1, 3, 2, 4, 2, 0, 0, 0]]
    assert capped["score_index"].tolist() == [1, 2, 1, 5, 5, 8, 9, 11]  # row 1 starts at flat index 8
    assert capped["score_seq"].tolist() == [0, 0, 3, 2, 5, 1, 1, 4]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_mask_rules(implementation):
    model = tiny_model("mistral")
    model.config._attn_implementation = implementation
    layout = shared(model, padding_free=True)
    batch = layout([pair([1, 5], [6, 7], [9]), pair([1], [7], [8])])
    mask = layout.model_inputs(batch)["attention_mask"]
    if implementation == "sdpa":  # sdpa takes a bool mask (True attends): a quarter of a float32 one
        assert mask.dtype == torch.bool
        allowed = mask[0, 0].int().tolist()
    else:  # eager adds the mask to the scores: float, 0 or the dtype's min
        assert mask.dtype == torch.float32 and mask.min() == torch.finfo(torch.float32).min
        allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],  # rejected sees the prompt, not chosen
        [0, 0, 0, 0, 0, 1, 0, 0],  # next pair starts fresh
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1, 0, 1],
    ]
    model.config.sliding_window = 2  # window in positions: rejected (position 2) still sees position 1, not 0
    row = layout.model_inputs(batch)["attention_mask"][0, 0, 4]
    assert (row if implementation == "sdpa" else row == 0).int().tolist()[:5] == [0, 1, 0, 0, 1]


def test_layer_types_get_a_dict_and_wrappers_are_unwrapped():
    model = tiny_model("gemma2")

    class Wrapper(torch.nn.Module):  # DDP / DeepSpeed style
        def __init__(self, module):
            super().__init__()
            self.module = module

    layout = choose_layout(Wrapper(model), SimPOConfig(output_dir="/tmp/simpo-test", report_to=[]), PAD)
    inputs = layout.model_inputs(layout(ROWS))
    assert set(inputs["attention_mask"]) == {"full_attention", "sliding_attention"}
    assert inputs["use_cache"] is False and inputs["position_ids"].shape == inputs["input_ids"].shape


def test_peft_model_is_unwrapped_for_its_config():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("mistral"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    features = mixed_pairs()
    plain = layout_results(model, PlainLayout(PAD), features)[0]
    shared_ = layout_results(
        model, choose_layout(model, SimPOConfig(output_dir="/tmp/x", report_to=[]), PAD), features
    )[0]
    assert (shared_ - plain).abs().max() < TOL


@pytest.mark.parametrize(
    "config, implementation, message",
    [
        (LlamaConfig(**SIZES), "flash_attention_2", "attn_implementation"),
        (
            GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, bos_token_id=1, eos_token_id=2),
            "eager",
            "model types",
        ),
        (Qwen2Config(**SIZES, layer_types=["full_attention", "chunked_attention"]), "sdpa", "layer types"),
    ],
)
def test_refuses_what_it_cannot_do_exactly(config, implementation, message):
    model = AutoModelForCausalLM.from_config(config)
    model.config._attn_implementation = implementation  # as loaded; no kernel needs to be installed to refuse
    layout = SharedPrefixLayout(PAD, config=model.config)
    with pytest.raises(ValueError, match=message):
        layout.model_inputs(layout(ROWS))


def test_config_and_trainer_choose_the_layout_once(caplog):
    with pytest.raises(ValueError, match="padding_free packs prefix-shared pairs: it needs prefix_sharing true or"):
        SimPOConfig(output_dir="/tmp/simpo-test", padding_free=True, prefix_sharing=False, report_to=[])
    with pytest.raises(ValueError, match="max_tokens_per_row=60 sizes the rows padding_free packs: it needs"):
        SimPOConfig(output_dir="/tmp/simpo-test", max_tokens_per_row=60, report_to=[])
    from simpo.train.trainer import SimPOTrainer

    def layout(model, **kwargs):
        args = SimPOConfig(output_dir="/tmp/simpo-test", report_to=[], padding_value=PAD, **kwargs)
        trainer = SimPOTrainer(model=model, args=args)
        assert trainer.data_collator is trainer.layout  # the layout collates the batches it later runs
        return trainer.layout

    packed = layout(tiny_model("llama-sdpa"), prefix_sharing=True, padding_free=True, max_tokens_per_row=60)
    assert isinstance(packed, SharedPrefixLayout) and packed.padding_free and packed.max_tokens_per_row == 60
    assert packed.name == "prefix sharing + padding-free"
    rows = packed(mixed_pairs())["input_ids"]  # the key reaches the collation: rows of at most 60 tokens
    assert rows.shape[0] > 1 and rows.shape[1] <= 60
    assert isinstance(layout(tiny_model("llama-sdpa")), SharedPrefixLayout)  # auto, and the model qualifies
    assert isinstance(layout(tiny_model("llama-sdpa"), prefix_sharing=False), PlainLayout)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB))
    with caplog.at_level(logging.INFO):
        assert isinstance(layout(gpt2), PlainLayout)  # auto: plain, and the log says why
    assert "prefix_sharing=auto: using the plain layout. prefix_sharing is verified exact only" in caplog.text
    with pytest.raises(ValueError, match="verified exact only for model types"):
        layout(gpt2, prefix_sharing=True)  # asked for explicitly: refused before training, not at the first step
    with pytest.raises(ValueError, match="verified exact only for model types"):
        layout(gpt2, padding_free=True)
    bf16 = layout(tiny_model("llama-eager"), bf16=True, use_cpu=True)  # eager under bf16 autocast: scores in bf16
    assert bf16.mask_dtype == torch.bfloat16


# FlexAttention: the same rule as a block mask, so the kernel skips the masked blocks (GPUs; forward only on CPU).


@pytest.mark.parametrize("padding_free,window", [(False, None), (True, None), (True, WINDOW)])
def test_the_flex_mask_is_the_dense_mask(features, padding_free, window):
    """FlexAttention evaluates the rule under vmap over (b, h, q, kv) scalars; densely it is evaluated on broadcast
    index grids. Both must give the same mask, padded rows, packed rows and the window included."""
    from torch.nn.attention.flex_attention import create_mask

    from simpo.train.layouts.shared_prefix import attention_rule

    model = tiny_model("llama-sdpa")
    layout = shared(model, padding_free=padding_free)
    batch = layout(features)
    rows, length = batch["segment_ids"].shape
    rule = attention_rule(batch["segment_ids"], batch["branch_ids"], batch["position_ids"], window)
    dense = layout.kernel_mask(rule, batch["segment_ids"])
    assert torch.equal(create_mask(rule, rows, 1, length, length, device="cpu"), dense)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-sdpa", "gemma2"])
def test_flex_attention_forward_matches_the_dense_masks(features, name):
    """The forward through transformers' flex_attention kernel (compiled on CPU), with the BlockMask or, for Gemma-2's
    layer types and soft-capping, a dict of them: the log-probs of the dense layout (no backward on CPU)."""
    model = tiny_model(name)
    with torch.no_grad():
        dense = logps(model, shared(model, padding_free=True), shared(model, padding_free=True)(features))
        model.set_attn_implementation("flex_attention")
        layout = shared(model, padding_free=True)
        assert layout.flex and layout.name == "prefix sharing + padding-free (FlexAttention block masks)"
        flex = logps(model, layout, layout(features))
    assert (flex - dense).abs().max() < TOL


def test_flex_is_chosen_on_gpus_and_replaces_the_loaded_kernel(monkeypatch):
    import simpo.train.layouts

    args = lambda **kw: SimPOConfig(output_dir="/tmp/simpo-test", report_to=[], use_cpu=True, **kw)
    with pytest.raises(ValueError, match="flex_attention: true needs a GPU: FlexAttention has no backward on CPU"):
        choose_layout(tiny_model("llama-sdpa"), args(flex_attention=True), PAD)
    assert not choose_layout(tiny_model("llama-sdpa"), args(), PAD).flex  # auto on a CPU: dense masks
    monkeypatch.setattr(simpo.train.layouts, "uses_flex", lambda args: True)  # as on a GPU
    model = tiny_model("llama-sdpa")
    model.config._attn_implementation = "flash_attention_2"  # as the paper configs load it: no mask possible
    layout = choose_layout(model, args(), PAD)
    assert layout.flex and model.config._attn_implementation == "flex_attention"
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB))
    assert isinstance(choose_layout(gpt2, args(), PAD), PlainLayout)  # not a verified family: plain, kernel kept
    assert gpt2.config._attn_implementation != "flex_attention"
