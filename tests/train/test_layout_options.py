"""The layouts a run may use (simpo/train/layouts/__init__.py, layout_options), best first in tiers, for the start-up
self-check to choose from: padding_free and flex_attention at auto offer both of their options in one tier (timed on a
GPU); true and false offer their own alone; prefix_sharing auto ends with the plain layout. No constant decides
padding_free any more: without a measurement (a CPU, or self_check: off) auto is off."""

import pickle
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import simpo.train.layouts as layouts
from simpo.train.config import SimPOConfig
from simpo.train.layouts import PLAIN, LayoutChoice, layout_options


def tiny(attn_implementation="sdpa"):
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def args(padding_free="auto", device="cuda", prefix_sharing="auto", flex_attention="auto"):
    return SimpleNamespace(
        padding_free=padding_free,
        device=torch.device(device),
        prefix_sharing=prefix_sharing,
        flex_attention=flex_attention,
    )


def names(tiers):
    return [[choice.name for choice in tier] for tier in tiers]


def test_no_constant_decides_padding_free_any_more(tmp_path):
    assert SimPOConfig(output_dir=str(tmp_path), use_cpu=True, prefix_sharing=False).padding_free == "auto"
    assert not hasattr(layouts, "PADDING_FREE_ON_CUDA")
    config = SimPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert not layouts.choose_layout(tiny(), config, 0).padding_free  # the first option: without a measurement


def test_on_a_gpu_auto_offers_flex_and_dense_masks_with_and_without_padding_free():
    assert names(layout_options(tiny(), args())) == [
        [
            "prefix sharing (FlexAttention block masks)",
            "prefix sharing + padding-free (FlexAttention block masks)",
            "prefix sharing (dense masks)",
            "prefix sharing + padding-free (dense masks)",
        ],
        ["plain"],
    ]


def test_on_a_cpu_auto_offers_dense_masks_without_then_with_padding_free():
    assert layout_options(tiny(), args(device="cpu")) == [
        [LayoutChoice(True, False, False), LayoutChoice(True, True, False)],
        [PLAIN],
    ]


@pytest.mark.parametrize(
    "setting,expected",
    [
        (dict(padding_free=True), [[LayoutChoice(True, True, True), LayoutChoice(True, True, False)], [PLAIN]]),
        (dict(padding_free=False, flex_attention=False), [[LayoutChoice(True, False, False)], [PLAIN]]),
        (dict(flex_attention=True, padding_free=False), [[LayoutChoice(True, False, True)], [PLAIN]]),
        (dict(prefix_sharing=True, padding_free=False, flex_attention=False), [[LayoutChoice(True, False, False)]]),
        (dict(prefix_sharing=False), [[PLAIN]]),
    ],
)
def test_an_explicit_setting_offers_its_own_option_alone(setting, expected):
    assert layout_options(tiny(), args(**setting)) == expected


def test_a_kernel_that_cannot_take_the_dense_mask_leaves_flex_alone_on_a_gpu_and_the_plain_layout_on_a_cpu():
    model = tiny("sdpa")
    model.config._attn_implementation = "flash_attention_2"  # as the paper configs load it (not installable here)
    assert names(layout_options(model, args(padding_free=False))) == [
        ["prefix sharing (FlexAttention block masks)"],
        ["plain"],
    ]
    assert layout_options(model, args(device="cpu")) == [[PLAIN]]
    with pytest.raises(ValueError, match="prefix_sharing needs attn_implementation in"):
        layout_options(model, args(device="cpu", prefix_sharing=True))


def test_the_layout_slot_is_the_collator_whose_layout_the_check_replaces():
    model = tiny()
    config = SimPOConfig(output_dir="/tmp/simpo-test", use_cpu=True, report_to=[])
    slot = layouts.LayoutSlot(layouts.choose_layout(model, config, 0))
    feature = {
        "chosen_input_ids": [1, 2, 3, 4],
        "chosen_labels": [-100, -100, 3, 4],
        "rejected_input_ids": [1, 2, 5],
        "rejected_labels": [-100, -100, 5],
    }
    assert slot.name == "prefix sharing" and "branch_ids" in slot([feature])
    slot.layout = layouts.build_layout(PLAIN, model, config, 0, "sdpa")
    assert slot.name == "plain" and "branch_ids" not in slot([feature])
    assert slot.model_inputs(slot([feature]))["attention_mask"].shape == (2, 4)
    copy = pickle.loads(pickle.dumps(slot))  # as a spawned dataloader worker gets it
    assert type(copy) is layouts.LayoutSlot and isinstance(copy, layouts.PlainLayout) and copy.name == "plain"
