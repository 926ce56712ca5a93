"""tiled_logps on CUDA: the head's GEMMs in cuBLAS, one [token, vocabulary] tile at a time, and Triton kernels for
everything between them. Same contract as simpo.kernels.torch_tiles.TiledLogProbs, which stays the reference.

With u = hidden @ weight^T + bias (the GEMM's fp32 output) and z the model's logits, these kernels equal

    z = scale * u.float()                                    # [N, V], never held: one tile at a time
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    lse = z.logsumexp(-1)                                    # online over vocabulary tiles, in fp32
    logp = z.gather(-1, labels[:, None])[:, 0] - lse
    mean_logit = z.mean(-1)                                  # detached

and the backward, for g = dL/dlogp, recomputes each tile of u and turns it into

    du = g[:, None] * dz_du * (one_hot(labels, V) - (z - lse[:, None]).exp())
    dz_du = scale * (1 - (z / softcap) ** 2) under a softcap, else scale
    grad_hidden = du @ weight;  grad_weight = du.T @ hidden;  grad_bias = du.sum(0)

On a GPU the GEMMs write fp32 (the plain path's logits are rounded to bf16 first); du is rounded to the GEMM dtype
once, after the one-hot term is in, as the plain path's logit gradient is; the hidden-state gradient, and a weight
gradient summed over several token tiles, accumulate in fp32. Per token the forward keeps the logsumexp alone (the
label logit is read off its tile). The tile sizes are chosen by timing forward and backward on the first call per
(GPU, shapes) (choose_tiles) and kept on disk for later processes (tile_cache.py), the kernels' block sizes by
triton.autotune (its timings cached on disk too, in triton's cache directory). Under TRITON_INTERPRET=1, set before
triton is first imported, the same code runs on CPU tensors with small fixed blocks: how the tests check it.
"""

import inspect

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from simpo.errors import ConfigError, FastPathError
from simpo.kernels.common import DEFAULT_TILES, addmm_fp32, no_autocast, operand_dtype, transform
from simpo.kernels.ledger import KernelLedger
from simpo.kernels.tile_cache import cache_key, cached_tiles
from simpo.kernels.torch_tiles import TiledLogProbs  # the reference the first call per shape is checked against

INTERPRET = triton.knobs.runtime.interpret  # how triton.jit compiled the kernels below
TILE_ELEMENTS = 2**26  # largest tile tried: 256 MB of fp32 logits plus 128 MB of their bf16 gradient


@triton.jit
def _logits(u, b_ptr, cols, col_ok, scale, softcap, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr):
    """z from a [rows, cols] block of the GEMM's output: + bias, * scale, softcap * tanh(. / softcap)."""
    if HAS_BIAS:
        u += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    z = u * scale
    if HAS_SOFTCAP:  # softcap * tanh(z / softcap); tl has no tanh, and (1 - e) / (1 + e) is exact to 1e-7 near 0
        e = tl.exp(-2 * tl.abs(z) / softcap)
        z = tl.where(z < 0, -softcap, softcap) * (1 - e) / (1 + e)
    return z


@triton.jit
def _fold_kernel(
    u_ptr,
    stride,
    b_ptr,
    labels_ptr,
    v0,
    n_rows,
    n_cols,
    scale,
    softcap,
    lse_ptr,
    sum_ptr,
    label_ptr,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Per row of one tile: its logsumexp, its logit sum (softcap only) and, if the label is in it, the label logit."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    local = tl.load(labels_ptr + rows, mask=row_ok, other=-1) - v0
    top = tl.full([BLOCK_N], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_N], tl.float32)  # sum exp(z - top)
    z_sum = tl.zeros([BLOCK_N], tl.float32)
    z_label = tl.zeros([BLOCK_N], tl.float32)
    for c0 in range(0, n_cols, BLOCK_V):
        cols = c0 + tl.arange(0, BLOCK_V)
        col_ok = cols < n_cols
        u = tl.load(
            u_ptr + rows[:, None].to(tl.int64) * stride + cols[None, :],
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        z = tl.where(col_ok[None, :], _logits(u, b_ptr, cols, col_ok, scale, softcap, HAS_BIAS, HAS_SOFTCAP), 0.0)
        z_label += tl.sum(tl.where(cols[None, :] == local[:, None], z, 0.0), 1)
        if HAS_SOFTCAP:
            z_sum += tl.sum(z, 1)
        z = tl.where(col_ok[None, :], z, float("-inf"))
        new_top = tl.maximum(top, tl.max(z, 1))
        total = total * tl.exp(top - new_top) + tl.sum(tl.exp(z - new_top[:, None]), 1)
        top = new_top
    tl.store(lse_ptr + rows, top + tl.log(total), mask=row_ok)
    if HAS_SOFTCAP:
        tl.store(sum_ptr + rows, z_sum, mask=row_ok)
    tl.store(label_ptr + rows, z_label, mask=row_ok & (local >= 0) & (local < n_cols))


@triton.jit
def _grad_kernel(
    u_ptr,
    stride,
    b_ptr,
    labels_ptr,
    v0,
    n_rows,
    n_cols,
    scale,
    softcap,
    lse_ptr,
    g_ptr,
    du_ptr,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """du for one [BLOCK_N, BLOCK_V] block of a tile, into du_ptr (same layout, the GEMM dtype)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok, col_ok = rows < n_rows, cols < n_cols
    ok = row_ok[:, None] & col_ok[None, :]
    offsets = rows[:, None].to(tl.int64) * stride + cols[None, :]
    z = _logits(
        tl.load(u_ptr + offsets, mask=ok, other=0.0), b_ptr, cols, col_ok, scale, softcap, HAS_BIAS, HAS_SOFTCAP
    )
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)  # 0 on padding rows: they add nothing below
    local = tl.load(labels_ptr + rows, mask=row_ok, other=-1) - v0
    one_hot = (cols[None, :] == local[:, None]).to(tl.float32)
    du = g[:, None] * (one_hot - tl.exp(z - lse[:, None]))
    if HAS_SOFTCAP:
        du *= scale * (1 - (z / softcap) * (z / softcap))
    else:
        du *= scale
    if ROUND_BF16:  # the interpreter's fp32 -> bf16 cast truncates; a GPU's rounds to nearest even, as here
        bits = du.to(tl.uint32, bitcast=True)
        du = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    tl.store(du_ptr + offsets, du.to(du_ptr.dtype.element_ty), mask=ok)


def _configs(shapes):
    return [triton.Config({"BLOCK_N": n, "BLOCK_V": v}, num_warps=w) for n, v, w in shapes]


if INTERPRET:  # numpy runs each program: few, small blocks
    FOLD, GRAD = _fold_kernel, _grad_kernel
    FOLD_BLOCKS = GRAD_BLOCKS = {"BLOCK_N": 16, "BLOCK_V": 32}
else:
    # memory-bound passes over the fp32 tile: a few shapes of 4k-8k elements per block, timed per tile width
    # cache_results: the timings kept in triton's cache directory, so a relaunch does not autotune again
    TUNE = {
        "key": ["n_cols", "HAS_BIAS", "HAS_SOFTCAP"],
        **({"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}),
    }
    FOLD = triton.autotune(_configs([(1, 4096, 8), (4, 1024, 4), (8, 1024, 8), (16, 512, 8)]), **TUNE)(_fold_kernel)
    GRAD = triton.autotune(_configs([(16, 256, 4), (32, 256, 8), (64, 128, 8)]), **TUNE)(_grad_kernel)
    FOLD_BLOCKS = GRAD_BLOCKS = {}


def row_blocks(meta):
    return (triton.cdiv(meta["n_rows"], meta["BLOCK_N"]),)


def row_col_blocks(meta):
    return triton.cdiv(meta["n_rows"], meta["BLOCK_N"]), triton.cdiv(meta["n_cols"], meta["BLOCK_V"])


def launch(kernel, blocks, grid, **args):
    """kernel[grid](**args): autotuned on a GPU (the grid a function of the chosen blocks), fixed blocks under numpy."""
    if INTERPRET:
        return kernel[grid({**args, **blocks})](**args, **blocks)
    return kernel[grid](**args)


def forward_stats(h, weight, bias, labels, scale, softcap, dtype, tiles):
    """(lse, label logit, logit sum or None) per token, in fp32; h [N, H] already in the GEMM operands' dtype."""
    n, vocab = h.shape[0], weight.shape[0]
    token_tile, vocab_tile = max(1, min(n, tiles[0])), min(vocab, tiles[1])
    lse, label_z = torch.full((n,), -torch.inf, device=h.device), torch.zeros(n, device=h.device)
    logit_sum = torch.zeros(n, device=h.device) if softcap is not None else None
    u_flat, part_lse, part_sum = (
        torch.empty(k, device=h.device) for k in (token_tile * vocab_tile, token_tile, token_tile)
    )
    flags = {"HAS_BIAS": bias is not None, "HAS_SOFTCAP": softcap is not None}
    for v0 in range(0, vocab, vocab_tile):
        w = weight[v0 : v0 + vocab_tile].to(dtype)
        b = w if bias is None else bias[v0 : v0 + vocab_tile]  # any pointer when unused
        for t0 in range(0, n, token_tile):
            rows = slice(t0, t0 + token_tile)
            rows_n = h[rows].shape[0]
            u = addmm_fp32(u_flat[: rows_n * w.shape[0]].view(rows_n, w.shape[0]), h[rows], w.T, dtype, beta=0)
            launch(
                FOLD,
                FOLD_BLOCKS,
                row_blocks,
                u_ptr=u,
                stride=u.stride(0),
                b_ptr=b,
                labels_ptr=labels[rows],
                v0=v0,
                n_rows=rows_n,
                n_cols=w.shape[0],
                scale=scale,
                softcap=softcap or 1.0,
                lse_ptr=part_lse,
                sum_ptr=part_sum,
                label_ptr=label_z[rows],
                **flags,
            )
            torch.logaddexp(lse[rows], part_lse[:rows_n], out=lse[rows])
            if logit_sum is not None:
                logit_sum[rows] += part_sum[:rows_n]
    return lse, label_z, logit_sum


def backward_grads(h, weight, bias, labels, scale, softcap, dtype, tiles, lse, g, needs):
    """(grad_hidden fp32 or None, grad_weight in its dtype or None, grad_bias fp32 or None) for g = dL/dlogp [N];
    needs: which of hidden, weight, bias want a gradient."""
    n, vocab = h.shape[0], weight.shape[0]
    token_tile, vocab_tile = max(1, min(n, tiles[0])), min(vocab, tiles[1])
    grad_h = torch.zeros(h.shape, device=h.device) if needs[0] else None
    grad_w = (torch.empty_like if n else torch.zeros_like)(weight) if needs[1] else None
    grad_b = torch.empty(vocab, device=h.device) if bias is not None and needs[2] else None
    # one token tile and the weight's own dtype: the GEMM sums over all tokens in fp32 and rounds once, in place
    direct = token_tile == n and weight.dtype == dtype
    gw_flat = None if direct or grad_w is None else torch.empty(vocab_tile * h.shape[1], device=h.device)
    u_flat = torch.empty(token_tile * vocab_tile, device=h.device)
    du_flat = torch.empty(token_tile * vocab_tile, dtype=dtype, device=h.device)
    flags = {"HAS_BIAS": bias is not None, "HAS_SOFTCAP": softcap is not None}
    for v0 in range(0, vocab, vocab_tile):
        w = weight[v0 : v0 + vocab_tile].to(dtype)
        b, cols = w if bias is None else bias[v0 : v0 + vocab_tile], w.shape[0]
        gw = None if gw_flat is None else gw_flat[: cols * h.shape[1]].view(cols, h.shape[1]).zero_()
        if grad_b is not None:
            grad_b[v0 : v0 + cols] = 0
        for t0 in range(0, n, token_tile):
            rows = slice(t0, t0 + token_tile)
            rows_n = h[rows].shape[0]
            u = addmm_fp32(u_flat[: rows_n * cols].view(rows_n, cols), h[rows], w.T, dtype, beta=0)
            du = du_flat[: rows_n * cols].view(rows_n, cols)
            launch(
                GRAD,
                GRAD_BLOCKS,
                row_col_blocks,
                u_ptr=u,
                stride=u.stride(0),
                b_ptr=b,
                labels_ptr=labels[rows],
                v0=v0,
                n_rows=rows_n,
                n_cols=cols,
                scale=scale,
                softcap=softcap or 1.0,
                lse_ptr=lse[rows],
                g_ptr=g[rows],
                du_ptr=du,
                ROUND_BF16=INTERPRET and dtype == torch.bfloat16,
                **flags,
            )
            if grad_b is not None:  # from du as rounded for the GEMMs, as the plain path's bias gradient is
                grad_b[v0 : v0 + cols] += du.sum(0, dtype=torch.float32)
            if grad_h is not None:
                addmm_fp32(grad_h[rows], du, w, dtype)
            if grad_w is not None and direct:
                torch.mm(du.T, h, out=grad_w[v0 : v0 + cols])
            elif grad_w is not None:
                addmm_fp32(gw, du.T, h[rows], dtype)
        if gw is not None:
            grad_w[v0 : v0 + cols] = gw
    return grad_h, grad_w, grad_b


class TritonLogProbs(torch.autograd.Function):
    """TiledLogProbs' contract through forward_stats and backward_grads: (log p(label) [N] fp32, mean logit [N])."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, scale, softcap, dtype, tiles, ledger):
        with no_autocast(hidden):
            h, labels = hidden.to(dtype).contiguous(), labels.contiguous()
            tiles = choose_tiles(
                h, weight, bias, labels, scale, softcap, dtype, tiles, h.is_cuda and not INTERPRET, ledger
            )
            lse, label_z, logit_sum = forward_stats(h, weight, bias, labels, scale, softcap, dtype, tiles)
            if logit_sum is None:  # without a softcap the mean logit is linear in W: one [N, H] product
                mean_u = hidden.float() @ weight.mean(0, dtype=torch.float32)
                mean_logit = transform(mean_u if bias is None else mean_u + bias.float().mean(), scale, None)
            else:
                mean_logit = logit_sum.div_(weight.shape[0])
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.args = scale, softcap, dtype, tiles
        ctx.mark_non_differentiable(mean_logit)
        return label_z - lse, mean_logit

    @staticmethod
    def backward(ctx, grad_logps, _):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        with no_autocast(hidden):
            h = hidden.to(ctx.args[2]).contiguous()
            grad_h, grad_w, grad_b = backward_grads(
                h, weight, bias, labels, *ctx.args, lse, grad_logps.float().contiguous(), ctx.needs_input_grad[:3]
            )
        grad_h = None if grad_h is None else grad_h.to(hidden.dtype)
        return grad_h, grad_w, None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None, None


def choose_tiles(h, weight, bias, labels, scale, softcap, dtype, tiles, measure: bool, ledger) -> tuple[int, int]:
    """The caller's tiles where given. Else, when `measure` (on a GPU), the fastest forward + backward among tiles of
    up to TILE_ELEMENTS, timed on the first call per (device, dtype, H, V, bias, softcap, N rounded up to a power of
    2) unless tile_cache.py has it from an earlier process: the best tile depends on the GPU's GEMM kernels, which
    only a measurement knows; `ledger` (the run's KernelLedger) remembers the choice. Else the defaults."""
    if tiles[0] and tiles[1]:
        return tiles
    n, vocab = h.shape[0], weight.shape[0]
    if not measure or n == 0:
        chosen = DEFAULT_TILES.get(h.device.type, DEFAULT_TILES["cuda"])
    else:
        bucket = 1 << (n - 1).bit_length()
        device = torch.cuda.get_device_name(h.device) if h.device.type == "cuda" else h.device.type
        key = cache_key(
            device, dtype, h.shape[1], vocab, bias is not None, softcap is not None, bucket, triton.__version__
        )
        if key not in ledger.tiles:
            widths = (2048, 4096, 8192, 16384, 32768)
            candidates = sorted({(min(bucket, TILE_ELEMENTS // v), min(v, vocab)) for v in widths})
            g, needs = torch.ones(n, device=h.device), (True, True, bias is not None)

            def run(tiles):
                lse = forward_stats(h, weight, bias, labels, scale, softcap, dtype, tiles)[0]
                backward_grads(h, weight, bias, labels, scale, softcap, dtype, tiles, lse, g, needs)

            def measure():
                timings = {c: do_bench(lambda c=c: run(c), warmup=1, rep=1) for c in candidates}
                return min(timings, key=timings.get)

            # on disk per GPU name, dtype and shape: one process measures, the others and later launches reuse it
            ledger.tiles[key] = cached_tiles(key, measure, ledger)
            check_against_torch(h, weight, bias, labels, scale, softcap, dtype, ledger.tiles[key])
        chosen = ledger.tiles[key]
    return tiles[0] or chosen[0], tiles[1] or chosen[1]


CHECK_TOKENS = 64  # tokens of the first call per shape recomputed by the torch tiles (TiledLogProbs, the reference)


def check_against_torch(h, weight, bias, labels, scale, softcap, dtype, tiles) -> None:
    """On the first call per GPU and shapes, the log-probs of a few tokens must be the torch tiles' own (the same
    operands, fp32 sums in another order), else the kernels misbehave on this GPU: refuse to train on them."""
    rows = slice(0, CHECK_TOKENS)
    ours = forward_stats(h[rows], weight, bias, labels[rows], scale, softcap, dtype, tiles)
    ours = ours[1] - ours[0]
    reference = TiledLogProbs.apply(h[rows], weight, bias, labels[rows], scale, softcap, dtype, *tiles)[0]
    error = (ours - reference).abs().max().item() if ours.numel() else 0.0
    if error > 1e-2:
        raise FastPathError(
            f"triton_logps: the Triton kernels' log-probs differ by {error:.3g} from the torch tiles' on this GPU"
            f" ({torch.cuda.get_device_name(h.device) if h.is_cuda else h.device}). Set SIMPO_LOGPS_KERNEL=torch"
            " to train with the torch tiles, and report it."
        )


def triton_logps(
    hidden, weight, bias, labels, scale=1.0, softcap=None, dtype=None, token_tile=None, vocab_tile=None, ledger=None
):
    """tiled_logps' contract on CUDA tensors (or any tensors under TRITON_INTERPRET=1); dtype: the GEMM operands'
    (default: operand_dtype of the weight's); ledger: the run's KernelLedger (remembers the tile choice)."""
    if hidden.device.type != "cuda" and not INTERPRET:
        raise ConfigError(
            f"triton_logps: {hidden.device.type} tensors need a CUDA device, or TRITON_INTERPRET=1 set before triton "
            "is first imported (the Triton interpreter, for tests). Use the torch path instead: kernel='torch'."
        )
    dtype = dtype or operand_dtype(weight.dtype)
    ledger = ledger if ledger is not None else KernelLedger()
    tiles = (token_tile, vocab_tile)
    return TritonLogProbs.apply(hidden, weight, bias, labels, float(scale), softcap, dtype, tiles, ledger)
