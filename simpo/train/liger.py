"""liger_kernels: Liger-Kernel's fused RMSNorm, RoPE and SwiGLU/GeGLU in place of the model's own (what TRL users
get from use_liger_kernel), without Liger's loss: simpo's fused log-probs (simpo/kernels) replace that.

auto: on for a CUDA run when liger-kernel is installed and the model is one of LIGER_MODEL_TYPES; off otherwise
(Liger's kernels are Triton GPU kernels: they do not run on CPU, not even under Triton's interpreter). true: on, or
an error naming what is missing. false: off. The start summary says which, and why.
"""

import importlib.util

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
    setting = args.liger_kernels
    if setting is False:
        return "off (liger_kernels: false)"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(base.config, "model_type", None)
    if setting == "auto":
        if args.device.type != "cuda":
            return "off (auto: no CUDA device; Liger's kernels run on GPUs)"
        if not liger_installed():
            return "off (auto: liger-kernel is not installed)"
        if model_type not in LIGER_MODEL_TYPES:
            return f"off (auto: no Liger patch used for model type {model_type!r})"
    elif not liger_installed():
        raise ConfigError(LIGER_MISSING)
    elif model_type not in LIGER_MODEL_TYPES:
        raise ConfigError(
            f"liger_kernels: true patches model types {LIGER_MODEL_TYPES}, not {model_type!r}; set"
            " liger_kernels: auto or false."
        )
    from liger_kernel.transformers import _apply_liger_kernel_to_instance  # the function transformers' Trainer uses

    _apply_liger_kernel_to_instance(model=base, **LIGER_KERNELS)  # each family's function takes the keys it knows
    mlp = "GeGLU" if model_type == "gemma2" else "SwiGLU"
    return f"on (Liger RMSNorm, RoPE, {mlp}; the loss stays simpo's)"
