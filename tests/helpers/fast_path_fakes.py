"""Fast paths made wrong on purpose, for the start-up self-check's tests (tests/train/test_self_check.py and the
2-process launch, tests/helpers/self_check_ranks.py): a log-prob kernel that shifts every log-prob, one that raises,
one whose gradient is twice the true one, a prefix-sharing mask that lets rejected see chosen, and stand-ins for Liger's
patch (liger-kernel does not run on CPU)."""

import sys
import types

import torch

import simpo.kernels.dispatch
from simpo.kernels.torch_tiles import TiledLogProbs
from simpo.train import liger
from simpo.train.layouts.shared_prefix import SharedPrefixLayout


def shifted_tiles(shift: float):
    """The torch tiles with every token's log-prob moved by `shift`: each average moves by exactly that."""

    class Shifted:
        @staticmethod
        def apply(*args):
            logps, means = TiledLogProbs.apply(*args)
            return logps + shift, means

    return Shifted


class RaisingTiles:
    @staticmethod
    def apply(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class Doubled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class DoubledGradientTiles:
    """Right log-probs, wrong backward: only the gradient comparison sees it."""

    @staticmethod
    def apply(*args):
        logps, means = TiledLogProbs.apply(*args)
        return Doubled.apply(logps), means


def break_tiles(monkeypatch, tiles) -> None:
    monkeypatch.setattr(simpo.kernels.dispatch, "TiledLogProbs", tiles)


def leak_rejected_into_chosen(monkeypatch, only_flex: bool) -> None:
    """The prefix-shared mask with every branch marked as prompt: a rejected token then sees the chosen reply before
    it. only_flex: the FlexAttention block mask alone is wrong, the dense one stays right."""
    model_inputs = SharedPrefixLayout.model_inputs

    def leaky(self, batch):
        if self.flex or not only_flex:
            batch = {**batch, "branch_ids": torch.zeros_like(batch["branch_ids"])}
        return model_inputs(self, batch)

    monkeypatch.setattr(SharedPrefixLayout, "model_inputs", leaky)


def stand_in_liger(monkeypatch, norm_scale: float, on_cpu: bool = False) -> None:
    """A liger_kernel.transformers whose patch does what Liger's does to a Llama: binds a forward to every RMSNorm
    instance and swaps a module-level function of modeling_llama. The bound norm multiplies the model's own output by
    norm_scale (1.0: a correct patch). on_cpu: auto patches on CPU too (as on a GPU)."""
    from transformers.models.llama import modeling_llama

    def patch(model, **kwargs):
        for module in model.modules():
            if isinstance(module, modeling_llama.LlamaRMSNorm):
                own = type(module).forward
                module.__dict__["forward"] = types.MethodType(
                    lambda self, x, own=own: own(self, x) * norm_scale, module
                )
        rotary = modeling_llama.apply_rotary_pos_emb
        modeling_llama.apply_rotary_pos_emb = lambda *a, **k: rotary(*a, **k)

    module = types.ModuleType("liger_kernel.transformers")
    module._apply_liger_kernel_to_instance = patch
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", module)
    monkeypatch.setattr(liger, "liger_installed", lambda: True)
    # the patch changes modeling_llama: put its function back after the test whatever the check did
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", modeling_llama.apply_rotary_pos_emb)
    if on_cpu:
        monkeypatch.setattr(liger, "LIGER_DEVICES", ("cuda", "cpu"))
