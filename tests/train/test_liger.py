"""liger_kernels: which models get Liger's norm / RoPE / MLP kernels, with which arguments (never its loss), and
the refusals. liger-kernel does not run on CPU (its Triton kernels fail under the interpreter), so a stand-in
module records the call; the GPU check runs the real one."""

import sys
import types
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from simpo.train import liger
from simpo.train.config import SimPOConfig

SIZES = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
)
CONFIGS = {
    "llama": LlamaConfig(**SIZES),
    "mistral": MistralConfig(**SIZES),
    "qwen2": Qwen2Config(**SIZES),
    "gemma2": Gemma2Config(**SIZES, head_dim=8),
}
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def calls(monkeypatch):
    """A stand-in liger_kernel.transformers whose patch function records (model, kwargs)."""
    recorded = []
    module = types.ModuleType("liger_kernel.transformers")
    module._apply_liger_kernel_to_instance = lambda model, **kwargs: recorded.append((model, kwargs))
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", module)
    monkeypatch.setattr(liger, "liger_installed", lambda: True)
    return recorded


def args(setting, device=CUDA):
    return SimpleNamespace(liger_kernels=setting, device=device)


@pytest.mark.parametrize("model_type", list(CONFIGS))
@pytest.mark.parametrize("setting", [True, "auto"])
def test_each_family_is_patched_without_liger_loss(calls, model_type, setting):
    model = AutoModelForCausalLM.from_config(CONFIGS[model_type])
    text = liger.apply_liger(model, args(setting))
    [(patched, kwargs)] = calls
    assert patched is model
    assert kwargs == {
        "rope": True,
        "rms_norm": True,
        "swiglu": True,
        "geglu": True,
        "cross_entropy": False,
        "fused_linear_cross_entropy": False,
    }
    mlp = "GeGLU" if model_type == "gemma2" else "SwiGLU"
    assert text == f"on (Liger RMSNorm, RoPE, {mlp}; the loss stays simpo's)"


def test_a_peft_models_base_is_patched(calls):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_config(CONFIGS["llama"])
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    liger.apply_liger(model, args(True))
    assert calls[0][0] is model.get_base_model()


@pytest.mark.parametrize(
    "setting,device,expected",
    [
        (False, CUDA, "off (liger_kernels: false)"),
        ("auto", CPU, "off (auto: no CUDA device; Liger's kernels run on GPUs)"),
    ],
)
def test_off_when_false_or_auto_without_a_gpu(calls, setting, device, expected):
    assert liger.apply_liger(AutoModelForCausalLM.from_config(CONFIGS["llama"]), args(setting, device)) == expected
    assert calls == []


def test_auto_skips_what_it_cannot_patch_and_true_refuses_it(calls, monkeypatch):
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    assert liger.apply_liger(gpt2, args("auto")) == "off (auto: no Liger patch used for model type 'gpt2')"
    with pytest.raises(ValueError, match="liger_kernels: true patches model types .* not 'gpt2'"):
        liger.apply_liger(gpt2, args(True))
    monkeypatch.setattr(liger, "liger_installed", lambda: False)
    llama = AutoModelForCausalLM.from_config(CONFIGS["llama"])
    assert liger.apply_liger(llama, args("auto")) == "off (auto: liger-kernel is not installed)"
    with pytest.raises(ValueError, match=r"liger_kernels: true needs liger-kernel \(pip install liger-kernel\)"):
        liger.apply_liger(llama, args(True))
    assert calls == []


def test_the_transformers_key_that_would_add_liger_loss_is_refused(tmp_path):
    assert SimPOConfig(output_dir=str(tmp_path), use_cpu=True).liger_kernels == "auto"
    with pytest.raises(ValueError, match="use liger_kernels: true"):
        SimPOConfig(output_dir=str(tmp_path), use_cpu=True, use_liger_kernel=True)


def test_true_without_liger_kernel_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    """The user's view, liger-kernel not installed: the message alone, exit 2, and no output_dir (refused when the
    config is read, before the data and the model load)."""
    from conftest import REPO
    from refusals import refused

    from simpo.train.recipe import main

    out = tmp_path / "run"
    monkeypatch.setattr("simpo.train.liger.liger_installed", lambda: False)
    monkeypatch.setattr(
        sys,
        "argv",
        ["simpo-train", f"{REPO}/training_configs/tiny-simpo-cpu.yaml", f"--output_dir={out}", "--liger_kernels=true"],
    )
    refused(capsys, lambda _: main(), [], r"^liger_kernels: true needs liger-kernel \(pip install liger-kernel\)")
    assert not out.exists()
