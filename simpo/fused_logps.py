"""Per-token log-probs from the final hidden states, without ever holding the [N, V] logits.

The plain path (simpo/logps.py) keeps the full-vocabulary logits, their log-softmax and its gradient alive: gigabytes
for N = 2k tokens and V = 128k. Here the LM head is applied one [token_tile, vocab_tile] block at a time: the forward
keeps a running logsumexp per token, and the backward recomputes each block rather than storing it, one extra GEMM
for O(tile) memory instead of O(N * V). The GEMMs take the model's own dtype, as its head would; everything else, and
every sum across tiles, is fp32.
"""

import functools
import inspect
import logging

import torch

from simpo.logps import model_inputs, plain_token_logps
from simpo.model import unwrap_model

logger = logging.getLogger(__name__)


def transform(u: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    """The model's logits from u = h W^T + b (fp32, overwritten): scale * u, then softcap * tanh(. / softcap)."""
    if softcap is not None:
        return u.mul_(scale / softcap).tanh_().mul_(softcap)
    return u.mul_(scale) if scale != 1 else u


def transform_grad(z: torch.Tensor, scale: float, softcap: float | None):
    """dz/du from the logits z themselves: a tensor like z under a softcap, else the constant scale."""
    return scale * (1 - (z / softcap).square_()) if softcap is not None else scale


def gemm_dtype(weight: torch.Tensor) -> torch.dtype:
    """The GEMM operands' dtype: a bf16/fp16 model's own (an fp32 operand is rounded to it, as autograd rounds the
    plain path's gradient; bf16 GEMMs run at twice the fp32 rate on GPUs and on CPUs with AVX512-BF16), else fp32."""
    return weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else torch.float32


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
    """The logits block [tokens, vocab tile] in fp32, written into `out` when given: the loops reuse one buffer (and
    one `scratch` block in dtype for addmm_fp32), as a fresh 4 MB block each GEMM costs a quarter of the GEMM's time
    in page faults on CPU."""
    u = torch.empty(hidden.shape[0], w.shape[0], device=hidden.device) if out is None else out
    if b is None:
        addmm_fp32(u, hidden, w.T, dtype, beta=0, scratch=scratch)
    else:
        addmm_fp32(u.copy_(b.float().expand_as(u)), hidden, w.T, dtype, scratch=scratch)
    return transform(u, scale, softcap)


class TiledLogProbs(torch.autograd.Function):
    """(log p(label), mean logit) per token for hidden [N, H], weight [V, H], bias [V] or None, labels [N].

    log p(label) = z[label] - logsumexp(z). The label's logit is one dot product per token; only the logsumexp and
    the mean logit (for the logits/* metrics: no gradient) need the vocabulary, tile by tile.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, scale, softcap, token_tile, vocab_tile):
        n, vocab, dtype = hidden.shape[0], weight.shape[0], gemm_dtype(weight)
        lse = torch.full((n,), -torch.inf, device=hidden.device)
        logit_sum = torch.zeros(n, device=hidden.device) if softcap is not None else None
        buffers = tile_buffers(hidden, n, vocab, token_tile, vocab_tile, dtype)
        with _no_autocast(hidden):
            for v0 in range(0, vocab, vocab_tile):
                w, b = weight[v0 : v0 + vocab_tile], None if bias is None else bias[v0 : v0 + vocab_tile]
                for t0 in range(0, n, token_tile):
                    rows = slice(t0, t0 + token_tile)
                    z = tile_logits(hidden[rows], w, b, scale, softcap, dtype, *views(buffers, hidden[rows], w))
                    if logit_sum is not None:
                        logit_sum[rows] += z.sum(1)
                    top = z.amax(1)  # the tile's own logsumexp, in place in z
                    lse[rows] = torch.logaddexp(lse[rows], z.sub_(top[:, None]).exp_().sum(1).log_().add_(top))
            u_label = (hidden.float() * weight[labels].float()).sum(1)
            if rounds_products(dtype, hidden.device):  # rounded like the tiles' logits
                u_label = u_label.to(dtype).float()
            label_z = transform(u_label if bias is None else u_label + bias[labels].float(), scale, softcap)
            if logit_sum is None:  # without a softcap the mean logit is linear in W: one [N, H] product, no tile pass
                mean_u = hidden.float() @ weight.mean(0, dtype=torch.float32)
                mean_logit = transform(mean_u if bias is None else mean_u + bias.float().mean(), scale, None)
            else:
                mean_logit = logit_sum.div_(vocab)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, label_z)
        ctx.args = scale, softcap, token_tile, vocab_tile
        ctx.mark_non_differentiable(mean_logit)
        return label_z - lse, mean_logit

    @staticmethod
    def backward(ctx, grad_logps, _):
        hidden, weight, bias, labels, lse, label_z = ctx.saved_tensors
        scale, softcap, token_tile, vocab_tile = ctx.args
        # d logp[n] / du[n, v] = dz/du[n, v] * (onehot(label[n])[v] - softmax(z[n])[v]). The per-token factor g[n] is
        # kept out of the tiles: it scales [N, H] operands and results instead of [N, V] blocks. The onehot term is
        # O(N * H); only q = softmax * dz/du needs the vocabulary.
        g, dtype = grad_logps.float(), gemm_dtype(weight)
        g_hidden = (g[:, None] * hidden.float()).to(dtype)
        label_grad = g * transform_grad(label_z, scale, softcap)
        q_weight = torch.zeros(hidden.shape, device=hidden.device)  # sum_v q[n, v] W[v]
        grad_w, grad_b = torch.empty_like(weight), None if bias is None else torch.empty_like(bias)
        n, vocab = hidden.shape[0], weight.shape[0]
        buffers = tile_buffers(hidden, n, vocab, token_tile, vocab_tile, dtype)
        # an fp32 weight's gradient is summed in place; a bf16/fp16 one through an fp32 tile, then rounded once
        direct = grad_w.dtype == torch.float32
        gw_buffer = None if direct else torch.empty(min(vocab, vocab_tile), hidden.shape[1], device=hidden.device)
        with _no_autocast(hidden):
            for v0 in range(0, vocab, vocab_tile):
                w, b = weight[v0 : v0 + vocab_tile], None if bias is None else bias[v0 : v0 + vocab_tile]
                # this tile's weight and bias gradients, summed over tokens in fp32: onehot term minus softmax term
                hit = (labels >= v0) & (labels < v0 + w.shape[0])
                local, label_rows = labels[hit] - v0, label_grad[hit, None] * hidden[hit].float()
                gw = (grad_w[v0 : v0 + vocab_tile] if direct else gw_buffer[: w.shape[0]]).zero_()
                gw.index_add_(0, local, label_rows)
                gb = torch.zeros(w.shape[0], device=w.device).index_add_(0, local, label_grad[hit])
                for t0 in range(0, n, token_tile):
                    rows = slice(t0, t0 + token_tile)
                    z, low = views(buffers, hidden[rows], w)
                    z = tile_logits(hidden[rows], w, b, scale, softcap, dtype, z, low)
                    dz_du = transform_grad(z, scale, softcap)
                    q = z.sub_(lse[rows, None]).exp_()  # the softmax, in place in z
                    if softcap is not None or scale != 1:
                        q.mul_(dz_du)
                    if bias is not None:
                        gb.sub_(q.T @ g[rows])
                    if low is not None:  # the GEMM operand in dtype, once for both GEMMs
                        q = low.copy_(q)
                    addmm_fp32(q_weight[rows], q, w, dtype)
                    addmm_fp32(gw, q.T, g_hidden[rows], dtype, alpha=-1)
                if not direct:
                    grad_w[v0 : v0 + vocab_tile] = gw
                if grad_b is not None:
                    grad_b[v0 : v0 + vocab_tile] = gb
            grad_h = label_grad[:, None] * weight[labels].float() - g[:, None] * q_weight
        return grad_h.to(hidden.dtype), grad_w, grad_b, None, None, None, None, None


def tile_buffers(hidden, n, vocab, token_tile, vocab_tile, dtype):
    """One flat fp32 block for the logits, and one in the GEMM dtype (None for fp32) for products and operands."""
    size = min(n, token_tile) * min(vocab, vocab_tile)
    scratch = None if dtype == torch.float32 else torch.empty(size, dtype=dtype, device=hidden.device)
    return torch.empty(size, device=hidden.device), scratch


def views(buffers, hidden: torch.Tensor, w: torch.Tensor) -> list:
    """Contiguous [tokens, vocab tile] views at the start of each flat buffer (edge tiles are smaller); None stays."""
    shape = hidden.shape[0], w.shape[0]
    return [None if flat is None else flat[: shape[0] * shape[1]].view(shape) for flat in buffers]


def _no_autocast(tensor):
    """Autocast would round the fp32 GEMMs to bf16; the caller has already chosen the operands' dtype."""
    return torch.autocast(tensor.device.type, enabled=False)


# [token_tile, vocab_tile] per device. CPU: a 4 MB fp32 block stays in cache through its elementwise passes (512 x 2048
# measured as fast as 1024 x 4096 and smaller; benchmarks/logps_memory.py). CUDA: large blocks, few kernel launches.
DEFAULT_TILES = {"cpu": (512, 2048), "cuda": (4096, 8192)}


def tiled_logps(hidden, weight, bias, labels, scale=1.0, softcap=None, token_tile=None, vocab_tile=None):
    """log p(label) [N] fp32 and mean logit [N] (detached) for hidden [N, H] through a head weight [V, H] (+ bias)."""
    tiles = DEFAULT_TILES.get(hidden.device.type, DEFAULT_TILES["cuda"])
    token_tile, vocab_tile = token_tile or tiles[0], vocab_tile or tiles[1]
    return TiledLogProbs.apply(hidden, weight, bias, labels, float(scale), softcap, token_tile, vocab_tile)


def head_transform(config) -> tuple[float, float | None]:
    """(scale, softcap) that the transformers 5.24 CausalLM of this config applies to h W^T + b. check_head catches
    a transform missing here."""
    config = config.get_text_config()
    scale = getattr(config, "logit_scale", None) or 1.0  # Cohere, Cohere2: logits * logit_scale
    if getattr(config, "logits_scaling", None):  # Granite*: logits / s; MiniCPM3: hidden / s; HyperCLOVA X: logits * s
        s = config.logits_scaling
        scale *= s if config.model_type.startswith("hyperclovax") else 1 / s
    scale *= getattr(config, "lm_head_multiplier", None) or 1.0  # Falcon-H1
    scale *= getattr(config, "output_multiplier", None) or 1.0  # MuseSpark, MuseGlimmer (before their softcap)
    softcap = getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_soft_cap", None)
    return float(scale), softcap


def head_module(lm) -> torch.nn.Module:
    """The module owning the LM head's weight [V, H] (and bias), under PEFT's wrappers; refuses an adapted head."""
    head = lm.get_output_embeddings()
    if hasattr(head, "modules_to_save"):  # PEFT's ModulesToSaveWrapper: a trainable copy per adapter
        active = [a for a in head.active_adapters if a in head.modules_to_save]
        head = head.original_module if head.disable_adapters or not active else head.modules_to_save[active[0]]
    if hasattr(head, "get_base_layer"):  # a PEFT tuner layer (LoRA, ...) on the head itself
        unmerged = set(head.active_adapters) - set(head.merged_adapters)
        if unmerged and not head.disable_adapters:
            raise NotImplementedError(
                f"fused_logps: the LM head carries the adapter(s) {sorted(unmerged)}, whose delta this path would "
                "ignore. Leave the head out of the adapter's target modules, or set fused_logps=False."
            )
        head = head.get_base_layer()
    if not head.weight.dtype.is_floating_point:
        raise NotImplementedError(f"fused_logps: a quantised LM head ({head.weight.dtype}) is not supported.")
    return head


def fsdp_sharded(weight: torch.Tensor) -> bool:
    """FSDP2 (a DTensor shard) or FSDP1 (a flat 1-D view). Gathering a DTensor by hand is not enough: its backward
    slices the gradient without reducing it over the data-parallel ranks, so the replicas would diverge."""
    return hasattr(weight, "full_tensor") or (weight.dim() != 2 and not hasattr(weight, "ds_id"))


def fused_token_logps(model, batch: dict, token_tile: int | None = None, vocab_tile: int | None = None):
    """Same contract as plain_token_logps: (log p(label) [N] fp32, mean logit over the vocabulary [N] detached).

    The forward goes through `model` itself, so that DDP / DeepSpeed / PEFT hooks fire; the model computes logits for
    the last position only, and a hook on the decoder takes its final (post-norm) hidden states.
    """
    lm = unwrap_model(model)
    head = head_module(lm)
    if fsdp_sharded(head.weight):
        _info_once("fused_logps: the LM head is sharded by FSDP, which this path cannot gather; using plain logps.")
        return plain_token_logps(model, batch)
    captured = []
    hook = lm.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        inputs = model_inputs(model, batch)
        if "logits_to_keep" in inspect.signature(lm.forward).parameters:
            inputs["logits_to_keep"] = 1
        outputs = model(**inputs)
    finally:
        hook.remove()
    hidden, (scale, softcap) = captured[-1], head_transform(lm.config)

    def head_forward(scored):
        weight, bias = head.weight, getattr(head, "bias", None)
        if torch.is_autocast_enabled(scored.device.type):  # as in nn.Linear: the operands in the autocast dtype
            dtype = torch.get_autocast_dtype(scored.device.type)
            scored, weight, bias = (None if t is None else t.to(dtype) for t in (scored, weight, bias))
        check_head(outputs.logits[:, -1], hidden[:, -1], weight, bias, scale, softcap)
        return tiled_logps(scored, weight, bias, batch["score_labels"], scale, softcap, token_tile, vocab_tile)

    # Run as the head module's forward so that its hooks fire around it: DeepSpeed ZeRO-3 gathers the weight for the
    # forward and again for the backward, and the gradient lands while it is whole, as for any nn.Linear.
    head.forward = head_forward
    try:
        return head(hidden.flatten(0, 1)[batch["score_index"]])
    finally:
        del head.forward


@functools.cache
def _info_once(message: str) -> None:
    logger.info(message)


@torch.no_grad()
def check_head(model_logits, hidden, weight, bias, scale, softcap) -> None:
    """The model's own logits at the last position must be ours there. Else its head does something this path does
    not reproduce (a transform missing from head_transform, say), and training on it would be silently wrong."""
    with _no_autocast(hidden):
        ours = tile_logits(hidden, weight, bias, scale, softcap, gemm_dtype(weight))
    theirs = model_logits.float()
    error = (ours - theirs).abs().max()
    tolerance = (1 + theirs.abs().max()) * (1e-4 if model_logits.dtype == torch.float32 else 3e-2)
    if error > tolerance:
        raise NotImplementedError(
            f"fused_logps: the model's logits differ by {error:.3g} from {scale} * (hidden @ lm_head.weight.T + bias) "
            f"with softcap {softcap}: its head does something this path does not know. Set fused_logps=False."
        )
