"""liger_kernels: Liger-Kernel's fused RMSNorm, RoPE and SwiGLU/GeGLU in place of the model's own (what TRL users
get from use_liger_kernel), without Liger's loss: simpo's fused log-probs (simpo/kernels) replace that.

auto: on for a CUDA run when liger-kernel is installed and the model is one of LIGER_MODEL_TYPES; off otherwise
(Liger's kernels are Triton GPU kernels: they do not run on CPU, not even under Triton's interpreter). true: on, or
an error naming what is missing. false: off. The start summary says which, and why.

The patch is recorded (LigerPatch): the start-up self-check (simpo/train/self_check/) turns it off to run the plain
reference path, and keeps it off where Liger's layers do not agree with the model's own on this device.
"""

import importlib.util
import sys
from dataclasses import dataclass

from torch import nn

from simpo.errors import ConfigError

# Families whose Liger patch simpo uses: the verified prefix-sharing families (RMSNorm, RoPE, SwiGLU; Gemma-2 GeGLU).
LIGER_MODEL_TYPES = ("llama", "mistral", "gemma2", "qwen2")
# The norm / RoPE / MLP kernels; never Liger's cross-entropy or its fused linear cross-entropy forward.
LIGER_KERNELS = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "geglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}


LIGER_MISSING = (
    "liger_kernels: true needs liger-kernel (pip install liger-kernel), which is not installed; install"
    " it, or set liger_kernels: auto (on when installed) or false."
)


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger_problems(args) -> list[str]:
    """liger_kernels and transformers' use_liger_kernel as read from the config (SimPOConfig.__post_init__): refused
    before the data and the model load when they cannot be honoured."""
    problems = []
    if args.liger_kernels is True and not liger_installed():
        problems.append(LIGER_MISSING)
    if args.use_liger_kernel:
        problems.append(
            "use_liger_kernel would also patch in Liger's loss, which simpo's fused log-probs replace;"
            " use liger_kernels: true (the norm, RoPE and MLP kernels alone) instead."
        )
    return problems


def apply_liger(model: nn.Module, args) -> str:
    """Patches the model (a PEFT model's base) when liger_kernels asks for it; returns the summary's text."""
    return patch_liger(model, args)[0]


def patch_liger(model: nn.Module, args) -> tuple[str, "LigerPatch | None"]:
    """apply_liger's text, and the recorded patch (None when nothing was patched)."""
    setting = args.liger_kernels
    if setting is False:
        return "off (liger_kernels: false)", None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(base.config, "model_type", None)
    if setting == "auto":
        if args.device.type not in LIGER_DEVICES:
            return "off (auto: no CUDA device; Liger's kernels run on GPUs)", None
        if not liger_installed():
            return "off (auto: liger-kernel is not installed)", None
        if model_type not in LIGER_MODEL_TYPES:
            return f"off (auto: no Liger patch used for model type {model_type!r})", None
    elif not liger_installed():
        raise ConfigError(LIGER_MISSING)
    elif model_type not in LIGER_MODEL_TYPES:
        raise ConfigError(
            f"liger_kernels: true patches model types {LIGER_MODEL_TYPES}, not {model_type!r}; set"
            " liger_kernels: auto or false."
        )
    from liger_kernel.transformers import _apply_liger_kernel_to_instance  # the function transformers' Trainer uses

    # each family's function takes the keys it knows
    patch = LigerPatch.record(base, lambda: _apply_liger_kernel_to_instance(model=base, **LIGER_KERNELS))
    mlp = "GeGLU" if model_type == "gemma2" else "SwiGLU"
    return f"on (Liger RMSNorm, RoPE, {mlp}; the loss stays simpo's)", patch


LIGER_DEVICES = ("cuda",)  # where auto turns Liger on
_MISSING = object()


@dataclass
class LigerPatch:
    """What a patch function changed in a model, to undo (disable) and redo (enable): every attribute it set on the
    model's modules (their __dict__ and __class__: Liger binds forwards to instances) and every module-level name it
    replaced in the modules that define their classes (Liger swaps RoPE and the norm and MLP classes there).
    Entries: (namespace, key, before, after), a namespace being a dict or, for __class__, the module itself."""

    changes: list

    @classmethod
    def record(cls, model: nn.Module, patch) -> "LigerPatch":
        modules = list(model.modules())
        spaces = {id(v): v for v in (vars(sys.modules[type(m).__module__]) for m in modules)}.values()
        before = [(m, dict(vars(m)), m.__class__) for m in modules], [(space, dict(space)) for space in spaces]
        patch()
        changes = []
        for module, attributes, module_class in before[0]:
            if module.__class__ is not module_class:
                changes.append((module, "__class__", module_class, module.__class__))
            changes += _changed(vars(module), attributes)
        for space, names in before[1]:
            changes += _changed(space, names)
        return cls(changes)

    def disable(self) -> None:
        for space, key, before, _ in self.changes:
            _put(space, key, before)

    def enable(self) -> None:
        for space, key, _, after in self.changes:
            _put(space, key, after)


def _changed(now: dict, before: dict) -> list:
    keys = list(before) + [key for key in now if key not in before]
    return [
        (now, key, before.get(key, _MISSING), now.get(key, _MISSING))
        for key in keys
        if before.get(key, _MISSING) is not now.get(key, _MISSING)
    ]


def _put(space, key: str, value) -> None:
    if not isinstance(space, dict):
        setattr(space, key, value)
    elif value is _MISSING:
        space.pop(key, None)
    else:
        space[key] = value
