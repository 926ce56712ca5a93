"""Per-token log-probs through the LM head, tile by tile, without ever holding the [N, V] logits.

For N scored tokens with final hidden states h [N, H], a head weight W [V, H] (bias b [V] or none), labels y [N]:

    u = h W^T + b                                   the head's output                     [N, V]
    z = softcap * tanh(scale * u / softcap)         the model's logits (z = scale * u without a softcap)
    log p(y_n) = z[n, y_n] - logsumexp_v z[n, v]    what SimPO averages into its reward (arXiv:2405.14734, eq. 4)

The naive code this equals is simpo/train/logps.py's plain path:
    logits = model(...).logits[scored]; logps = logits.float().log_softmax(-1).gather(-1, y[:, None]).squeeze(-1)
which keeps the logits, their log-softmax and its gradient alive: gigabytes for N = 2k tokens and V = 128k. Here the
head is applied one [token_tile, vocab_tile] block at a time: the forward keeps a running logsumexp per token, and the
backward recomputes each block rather than storing it (one extra GEMM for O(tile) memory instead of O(N * V)).

Backward, with g[n] = dL/d log p(y_n) and p = softmax(z):
    dL/du[n, v] = g[n] * dz/du[n, v] * (onehot(y_n)[v] - p[n, v])
    dL/dh = dL/du @ W,  dL/dW = dL/du^T @ h,  dL/db = sum_n dL/du[n, :]
The onehot term is O(N * H) and done once; only q = p * dz/du needs the vocabulary, tile by tile.

The GEMM operands take the dtype the model's own head computes in (bf16 under autocast or for a bf16 model, as its
nn.Linear would); every softmax, logsumexp and sum across tiles is fp32.
"""

import torch

from simpo.kernels.common import addmm_fp32, label_logits, no_autocast, tile_logits, transform, transform_grad


class TiledLogProbs(torch.autograd.Function):
    """(log p(label), mean logit) per token for hidden [N, H], weight [V, H], bias [V] or None, labels [N]; the mean
    logit (for the logits/* metrics) has no gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, scale, softcap, dtype, token_tile, vocab_tile):
        n, vocab = hidden.shape[0], weight.shape[0]
        lse = torch.full((n,), -torch.inf, device=hidden.device)
        logit_sum = torch.zeros(n, device=hidden.device) if softcap is not None else None
        buffers = tile_buffers(hidden, n, vocab, token_tile, vocab_tile, dtype)
        with no_autocast(hidden):
            for v0 in range(0, vocab, vocab_tile):
                w, b = weight[v0 : v0 + vocab_tile], None if bias is None else bias[v0 : v0 + vocab_tile]
                for t0 in range(0, n, token_tile):
                    rows = slice(t0, t0 + token_tile)
                    z = tile_logits(hidden[rows], w, b, scale, softcap, dtype, *views(buffers, hidden[rows], w))
                    if logit_sum is not None:
                        logit_sum[rows] += z.sum(1)
                    # Running logsumexp: lse = logaddexp(lse, logsumexp of this tile); z is overwritten.
                    tile_max = z.amax(1)
                    tile_sum_exp = z.sub_(tile_max[:, None]).exp_().sum(1)
                    tile_lse = tile_sum_exp.log_().add_(tile_max)
                    lse[rows] = torch.logaddexp(lse[rows], tile_lse)
            label_z = label_logits(hidden, weight, bias, labels, scale, softcap, dtype)
            if logit_sum is None:  # without a softcap the mean logit is linear in W: one [N, H] product, no tile pass
                mean_u = hidden.float() @ weight.mean(0, dtype=torch.float32)
                mean_logit = transform(mean_u if bias is None else mean_u + bias.float().mean(), scale, None)
            else:
                mean_logit = logit_sum.div_(vocab)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, label_z)
        ctx.args = scale, softcap, dtype, token_tile, vocab_tile
        ctx.mark_non_differentiable(mean_logit)
        return label_z - lse, mean_logit

    @staticmethod
    def backward(ctx, grad_logps, _):
        hidden, weight, bias, labels, lse, label_z = ctx.saved_tensors
        scale, softcap, dtype, token_tile, vocab_tile = ctx.args
        n, vocab = hidden.shape[0], weight.shape[0]
        # g[n] is kept out of the tiles: it scales [N, H] operands and results instead of [N, V] blocks.
        g = grad_logps.float()
        g_hidden = (g[:, None] * hidden.float()).to(dtype)
        label_grad = g * transform_grad(label_z, scale, softcap)  # the onehot term's factor per token
        q_weight = torch.zeros(hidden.shape, device=hidden.device)  # sum_v q[n, v] W[v]
        grad_w, grad_b = torch.empty_like(weight), None if bias is None else torch.empty_like(bias)
        buffers = tile_buffers(hidden, n, vocab, token_tile, vocab_tile, dtype)
        # an fp32 weight's gradient is summed in place; a bf16/fp16 one through an fp32 tile, then rounded once
        direct = grad_w.dtype == torch.float32
        gw_buffer = None if direct else torch.empty(min(vocab, vocab_tile), hidden.shape[1], device=hidden.device)
        with no_autocast(hidden):
            for v0 in range(0, vocab, vocab_tile):
                w, b = weight[v0 : v0 + vocab_tile], None if bias is None else bias[v0 : v0 + vocab_tile]
                # This tile's weight and bias gradients, summed over tokens in fp32: onehot term minus softmax term.
                # The onehot term adds label_grad[n] * h[n] to row y_n; tokens whose label lies in another tile add
                # zero (a mask, not a selection, which would wait for the GPU to count them).
                in_tile = (labels >= v0) & (labels < v0 + w.shape[0])
                local_labels = (labels - v0).clamp_(0, w.shape[0] - 1)
                tile_label_grad = torch.where(in_tile, label_grad, 0.0)
                gw = (grad_w[v0 : v0 + vocab_tile] if direct else gw_buffer[: w.shape[0]]).zero_()
                gw.index_add_(0, local_labels, tile_label_grad[:, None] * hidden.float())
                gb = torch.zeros(w.shape[0], device=w.device).index_add_(0, local_labels, tile_label_grad)
                for t0 in range(0, n, token_tile):
                    rows = slice(t0, t0 + token_tile)
                    z, low = views(buffers, hidden[rows], w)
                    z = tile_logits(hidden[rows], w, b, scale, softcap, dtype, z, low)
                    dz_du = transform_grad(z, scale, softcap)
                    q = z.sub_(lse[rows, None]).exp_()  # the softmax p, in place in z
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
        return grad_h.to(hidden.dtype), grad_w, grad_b, None, None, None, None, None, None


def tile_buffers(hidden, n, vocab, token_tile, vocab_tile, dtype):
    """One flat fp32 block for the logits, and one in the GEMM dtype (None for fp32) for products and operands."""
    size = min(n, token_tile) * min(vocab, vocab_tile)
    scratch = None if dtype == torch.float32 else torch.empty(size, dtype=dtype, device=hidden.device)
    return torch.empty(size, device=hidden.device), scratch


def views(buffers, hidden: torch.Tensor, w: torch.Tensor) -> list:
    """Contiguous [tokens, vocab tile] views at the start of each flat buffer (edge tiles are smaller); None stays."""
    shape = hidden.shape[0], w.shape[0]
    return [None if flat is None else flat[: shape[0] * shape[1]].view(shape) for flat in buffers]
