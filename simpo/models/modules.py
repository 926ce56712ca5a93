"""What a loaded model is, under whatever wraps it: the transformers model under DDP, DeepSpeed and PEFT wrappers,
whether its weights are quantised, and dropout turned off."""

from torch import nn


def unwrap_model(model):
    """The transformers model under DDP / DeepSpeed (.module) and PEFT (get_base_model()) wrappers."""
    while True:
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        else:
            return model


def disable_dropout(model: nn.Module) -> None:
    """Every dropout probability set to 0: SimPO's (and the SFT stage's, by default) training runs without dropout."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def is_quantised(model: nn.Module) -> int | None:
    """4 or 8 when bitsandbytes loaded the weights in that many bits (the model or the base model a PEFT wrapper
    holds), else None."""
    for bits in (4, 8):
        if getattr(model, f"is_loaded_in_{bits}bit", False) or getattr(
            unwrap_model(model), f"is_loaded_in_{bits}bit", False
        ):
            return bits
    return None
