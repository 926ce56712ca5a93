"""Shared by several test modules (moved from test_gpu_conditions.py)."""

from types import MethodType

import torch
from accelerate.utils import convert_outputs_to_fp32

BF16 = dict(rtol=3e-2, atol=5e-2)


def accelerate_bf16(model):
    """What accelerate's prepare_model does to the model when mixed_precision is bf16 (accelerator.py, native_amp):
    its forward runs under autocast and its outputs come back in fp32."""
    forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward.__func__)
    model.forward = MethodType(convert_outputs_to_fp32(forward), model)
    return model
