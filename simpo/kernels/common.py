"""Helpers both tile kernels share (simpo/kernels/torch_tiles.py, simpo/kernels/triton_tiles.py): the head's logit
transform and its derivative, the GEMM operands' dtype and rounding, one [tokens, vocabulary tile] block of logits, and
the default tile sizes. Pure torch; nothing here chooses a kernel (simpo/kernels/dispatch.py does).

With u = h W^T + b the head's output, the model's logits are z = softcap * tanh(scale * u / softcap), or z = scale * u
without a softcap.
"""

import torch


def transform(u: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    """The model's logits from u = h W^T + b (fp32, overwritten): scale * u, then softcap * tanh(. / softcap)."""
    if softcap is not None:
        return u.mul_(scale / softcap).tanh_().mul_(softcap)
    return u.mul_(scale) if scale != 1 else u


def transform_grad(z: torch.Tensor, scale: float, softcap: float | None):
    """dz/du from the logits z themselves: a tensor like z under a softcap, else the constant scale."""
    return scale * (1 - (z / softcap).square_()) if softcap is not None else scale


def operand_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """The GEMM operands' dtype for a head that computes in compute_dtype: bf16/fp16 as is (an fp32 operand is
    rounded to it, as autocast rounds nn.Linear's; such GEMMs run at twice the fp32 rate), anything else fp32."""
    return compute_dtype if compute_dtype in (torch.bfloat16, torch.float16) else torch.float32


def rounds_products(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a GEMM's products come out rounded to dtype: on a CPU, which has no fp32-output kernel for bf16/fp16
    operands. CUDA sums them in fp32 straight into the fp32 output."""
    return dtype != torch.float32 and device.type != "cuda"


def addmm_fp32(acc, a, b, dtype: torch.dtype, alpha: float = 1.0, beta: float = 1.0, scratch=None) -> torch.Tensor:
    """acc = beta * acc + alpha * a @ b (beta 0 or 1) into fp32 acc, the operands in dtype. Where the products come
    out rounded (rounds_products), each is rounded to dtype (into `scratch` when given), as the model's own head
    rounds its logits, and then added in fp32."""
    a, b = a.to(dtype), b.to(dtype)
    if dtype == torch.float32:
        return torch.addmm(acc, a, b, alpha=alpha, beta=beta, out=acc)
    if not rounds_products(dtype, acc.device):
        return torch.addmm(acc, a, b, alpha=alpha, beta=beta, out_dtype=torch.float32, out=acc)
    product = a @ b if scratch is None else torch.mm(a, b, out=scratch)
    return acc.copy_(product) if beta == 0 else acc.add_(product, alpha=alpha)


def tile_logits(hidden, w, b, scale, softcap, dtype, out=None, scratch=None) -> torch.Tensor:
    """The logits block z [tokens, vocab tile] in fp32, written into `out` when given: the loops reuse one buffer (and
    one `scratch` block in dtype for addmm_fp32), as a fresh 4 MB block each GEMM costs a quarter of the GEMM's time
    in page faults on CPU."""
    u = torch.empty(hidden.shape[0], w.shape[0], device=hidden.device) if out is None else out
    if b is None:
        addmm_fp32(u, hidden, w.T, dtype, beta=0, scratch=scratch)
    else:
        addmm_fp32(u.copy_(b.float().expand_as(u)), hidden, w.T, dtype, scratch=scratch)
    return transform(u, scale, softcap)


def label_logits(hidden, weight, bias, labels, scale, softcap, dtype) -> torch.Tensor:
    """z[n, y_n] for every token: one dot product each, of operands in dtype, rounded as the tiles' logits are."""
    u = (hidden.to(dtype).float() * weight[labels].to(dtype).float()).sum(1)
    if rounds_products(dtype, hidden.device):
        u = u.to(dtype).float()
    return transform(u if bias is None else u + bias[labels].float(), scale, softcap)


def no_autocast(tensor):
    """Autocast would round the fp32 GEMMs to bf16; the caller has already chosen the operands' dtype."""
    return torch.autocast(tensor.device.type, enabled=False)


# [token_tile, vocab_tile] per device. CPU: a 4 MB fp32 block stays in cache through its elementwise passes (512 x 2048
# measured as fast as 1024 x 4096 and smaller; benchmarks/logps_memory.py). CUDA: large blocks, few kernel launches.
DEFAULT_TILES = {"cpu": (512, 2048), "cuda": (4096, 8192)}
