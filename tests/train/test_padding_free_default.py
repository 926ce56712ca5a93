"""padding_free: auto — the CUDA default decided in one place (simpo/train/layouts/__init__.py:PADDING_FREE_ON_CUDA),
off elsewhere; true and false as set."""

from types import SimpleNamespace

import pytest
import torch

import simpo.train.layouts as layouts
from simpo.train.config import SimPOConfig


def args(padding_free, device="cuda", prefix_sharing="auto"):
    return SimpleNamespace(padding_free=padding_free, device=torch.device(device), prefix_sharing=prefix_sharing)


def test_auto_is_the_default_and_stays_off_until_the_gpu_measurement(tmp_path):
    assert SimPOConfig(output_dir=str(tmp_path), use_cpu=True, prefix_sharing=False).padding_free == "auto"
    assert layouts.PADDING_FREE_ON_CUDA is False  # flip only on the device check's table (docs/speed-and-memory.md)
    assert layouts.padding_free(args("auto")) is False


@pytest.mark.parametrize(
    "device,prefix_sharing,expected",
    [("cuda", "auto", True), ("cuda", True, True), ("cpu", "auto", False), ("cuda", False, False)],
)
def test_auto_follows_the_cuda_default_where_prefix_sharing_can_run(monkeypatch, device, prefix_sharing, expected):
    monkeypatch.setattr(layouts, "PADDING_FREE_ON_CUDA", True)
    assert layouts.padding_free(args("auto", device, prefix_sharing)) is expected


@pytest.mark.parametrize("setting", [True, False])
def test_an_explicit_setting_is_kept(monkeypatch, setting):
    monkeypatch.setattr(layouts, "PADDING_FREE_ON_CUDA", not setting)
    assert layouts.padding_free(args(setting)) is setting
    assert layouts.padding_free(args(setting, "cpu")) is setting


def test_the_chosen_layout_packs_when_the_default_says_so(monkeypatch):
    from transformers import AutoModelForCausalLM, LlamaConfig

    model = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        attn_implementation="sdpa",
    )
    config = SimPOConfig(output_dir="/tmp/simpo-test", use_cpu=True, report_to=[])
    assert not layouts.choose_layout(model, config, 0).padding_free
    monkeypatch.setattr(layouts, "padding_free", lambda args: True)  # as PADDING_FREE_ON_CUDA on a GPU
    assert layouts.choose_layout(model, config, 0).padding_free
