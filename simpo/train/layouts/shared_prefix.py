"""Prefix sharing: one row per pair, [prompt | chosen | rejected], so the prompt is run once instead of twice.

Rejected positions restart at the prompt's end, and a custom mask lets rejected see the prompt but not chosen, so
every response token sees exactly what it sees in the plain layout (simpo/train/layouts/plain.py): same logits up to
rounding. With padding_free, several such pairs share a row (block-diagonal mask, positions restart per pair).

Transformers 5 passes a 4D mask (or a FlexAttention BlockMask) through untouched: its masking_utils returns a 4D
attention_mask before adding a causal part, a sliding window or padding, and models with config.layer_types take a
dict of one mask per layer type. So the mask below is the whole mask, and the window is built into it (for each
EXACT_MODEL_TYPES family, tests/train/test_shared_prefix.py compares every response token's log-prob with the plain
layout's, and shows that a mask without the window would be caught). One rule, attention_rule, says who attends to
whom: evaluated densely for eager and sdpa ([R, 1, L, L]), or as FlexAttention's mask_mod, whose block mask lets the
kernel skip the masked blocks (rejected x chosen, pair x other pair) instead of computing and discarding them.
"""

from dataclasses import dataclass

import torch

from simpo.errors import ConfigError
from simpo.train.layouts.batch import SharedPrefixRows
from simpo.train.layouts.plain import pad_right

PROMPT, CHOSEN, REJECTED = 0, 1, 2
# Kernels that take our mask as the whole mask: eager and sdpa a 4D tensor, flex_attention a BlockMask.
# flash_attention_* ignore a tensor mask (varlen needs cu_seqlens and cannot express "rejected sees the prompt but not
# chosen"): refused rather than trained on a silently different mask.
EXACT_ATTENTION = ("eager", "sdpa", "flex_attention")
# Families whose forward was checked to honour position_ids and a 4D (or per-layer-type dict of 4D) mask with
# nothing added on top. Others may add ALiBi from a 2D mask, chunked or bidirectional layers, ...: unchecked.
EXACT_MODEL_TYPES = ("llama", "mistral", "gemma2", "qwen2")
MASK_LAYER_TYPES = ("full_attention", "sliding_attention")
# FlexAttention's block size. With flex, rows are padded to a multiple of it: the compiled kernel and block mask then
# see a few widths, not one per batch (each new shape may recompile, 20-40 s on a GPU, and past torch's recompile
# limit flex falls back to an unfused path). The pads are blocks the mask skips; they cost only the linear layers.
FLEX_ROW_MULTIPLE = 128


def bucket_width(width: int, multiple: int = FLEX_ROW_MULTIPLE) -> int:
    return -(-width // multiple) * multiple


def shared_prefix_length(feature: dict, label_pad_token_id: int) -> int:
    """Longest common prefix of the two rows, stopping before the first labelled token of either side.

    The prompts agree except when a BPE merge across the prompt/response boundary changed the last prompt token on
    one side; the differing tokens then go to their branch, unlabelled, just as the plain layout leaves them unscored.
    """
    chosen, rejected = feature["chosen_input_ids"], feature["rejected_input_ids"]
    limit = min(
        first_label(feature["chosen_labels"], label_pad_token_id),
        first_label(feature["rejected_labels"], label_pad_token_id),
    )
    length = 0
    while length < limit and chosen[length] == rejected[length]:
        length += 1
    return length


def first_label(labels: list[int], label_pad_token_id: int) -> int:
    return next((i for i, label in enumerate(labels) if label != label_pad_token_id), len(labels))


@dataclass
class SharedPrefixLayout:
    """Pairs -> rows [prompt | chosen | rejected] with position_ids, segment_ids (pair index) and branch_ids.

    Produces the same score_* contract as the plain layout (sequence i = chosen of pair i, B + i = its rejected),
    plus the per-token ids model_inputs turns into the mask for `config`'s model. padding_free packs pairs into rows
    of at most max_tokens_per_row tokens (first fit, longest pair first; a longer pair gets a row to itself), or into
    a single row when it is None. Rows are right-padded to equal length (with flex, a multiple of
    FLEX_ROW_MULTIPLE); each pad token is its own segment.
    """

    pad_token_id: int
    label_pad_token_id: int = -100
    padding_free: bool = False
    max_tokens_per_row: int | None = None
    config: object = None  # the model's config (a PretrainedConfig): which masks, which window, which kernel
    mask_dtype: torch.dtype = torch.float32  # the dtype attention scores come out in (bf16 under bf16 autocast)

    @property
    def name(self) -> str:
        flex = " (FlexAttention block masks)" if self.config is not None and self.flex else ""
        return "prefix sharing" + (" + padding-free" if self.padding_free else "") + flex

    @property
    def flex(self) -> bool:
        return self.config._attn_implementation == "flex_attention"

    def __call__(self, features: list[dict]) -> SharedPrefixRows:
        num_pairs = len(features)
        prefixes = [shared_prefix_length(f, self.label_pad_token_id) for f in features]
        lengths = [len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) - p for f, p in zip(features, prefixes)]
        rows = self.assign_rows(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        if self.config is not None and self.flex:
            width = bucket_width(width)

        ids, pos, seg, branch, real = [], [], [], [], []
        score_index, score_labels, score_seq = [], [], []

        def score(index: int, label: int, seq: int) -> None:
            score_index.append(index), score_labels.append(label), score_seq.append(seq)

        for r, row in enumerate(rows):
            row_ids, row_pos, row_seg, row_branch = [], [], [], []
            for i in row:
                f, p, start = features[i], prefixes[i], r * width + len(row_ids)
                chosen, rejected = f["chosen_input_ids"], f["rejected_input_ids"]
                row_ids += chosen + rejected[p:]
                row_pos += list(range(len(chosen))) + list(range(p, len(rejected)))
                row_seg += [i] * (len(chosen) + len(rejected) - p)
                row_branch += [PROMPT] * p + [CHOSEN] * (len(chosen) - p) + [REJECTED] * (len(rejected) - p)
                # Token t is predicted at t - 1, as in the plain layout. For chosen that is also its row offset; a
                # rejected t - 1 >= p lies after the chosen branch, and t == p is scored from the last prompt token.
                for t, label in enumerate(f["chosen_labels"][1:], start=1):
                    if label != self.label_pad_token_id:
                        score(start + t - 1, label, i)
                for t, label in enumerate(f["rejected_labels"][1:], start=1):
                    if label != self.label_pad_token_id:
                        score(start + (t - 1 if t - 1 < p else len(chosen) + t - 1 - p), label, num_pairs + i)
            # Pads: position 0 and a segment of their own (negative, unique per column), so each attends only to
            # itself and no softmax row is empty.
            row_seg += list(range(-len(row_ids) - 1, -width - 1, -1))
            ids.append(row_ids), pos.append(row_pos), seg.append(row_seg), branch.append(row_branch)
            real.append([1] * len(row_ids))

        score_seq = torch.tensor(score_seq, dtype=torch.long)
        return SharedPrefixRows(
            input_ids=pad_right(ids, self.pad_token_id, width),
            attention_mask=pad_right(real, 0, width),
            position_ids=pad_right(pos, 0, width),
            segment_ids=torch.tensor(seg, dtype=torch.long),
            branch_ids=pad_right(branch, PROMPT, width),
            score_index=torch.tensor(score_index, dtype=torch.long),
            score_labels=torch.tensor(score_labels, dtype=torch.long),
            score_seq=score_seq,
            response_lengths=torch.bincount(score_seq, minlength=2 * num_pairs),
        )

    def assign_rows(self, lengths: list[int]) -> list[list[int]]:
        """Which pairs go in which row: one each, or packed first-fit by decreasing length."""
        if not self.padding_free:
            return [[i] for i in range(len(lengths))]
        if self.max_tokens_per_row is None:
            return [list(range(len(lengths)))]
        rows, room = [], []
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
            if r is None:
                rows.append([]), room.append(self.max_tokens_per_row)
                r = len(rows) - 1
            rows[r].append(i)
            room[r] -= lengths[i]
        return [sorted(row) for row in rows]

    def model_inputs(self, batch: SharedPrefixRows) -> dict:
        """input_ids, position_ids and the mask: one mask, with the window built in when config.sliding_window is set
        (Mistral), since none is added later; models with config.layer_types (Gemma2, Qwen2) take
        {"full_attention": M, "sliding_attention": M_sw}. Built once per forward; every layer reuses it."""
        problem = prefix_sharing_problem(self.config)  # refuses (never approximates) what the mask cannot express
        if problem:
            raise ConfigError(problem)
        segments, branches, positions = batch["segment_ids"], batch["branch_ids"], batch["position_ids"]
        window = getattr(self.config, "sliding_window", None)
        layer_types = getattr(self.config, "layer_types", None)
        rule = lambda window: attention_rule(segments, branches, positions, window)
        if layer_types:
            mask = {
                t: self.kernel_mask(rule(window if t == "sliding_attention" else None), segments)
                for t in sorted(set(layer_types))
            }
        else:
            mask = self.kernel_mask(rule(window), segments)
        return {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": positions, "use_cache": False}

    def kernel_mask(self, rule, rows_like: torch.Tensor):
        """The rule over [R, L] rows as the attention kernel takes it: flex a BlockMask; sdpa a bool [R, 1, L, L]
        (True attends); eager an additive float one (0 or the dtype's min). Never a bool for eager: it adds the mask
        to the scores, as 0/1, without error."""
        (rows, length), device = rows_like.shape, rows_like.device
        if self.flex:
            from torch.nn.attention.flex_attention import create_block_mask

            # Compiled, the block mask is built without ever materialising [R, L, L]; flex itself only runs on GPUs.
            return create_block_mask(rule, rows, None, length, length, device=device, _compile=device.type == "cuda")
        b, q, kv = (
            torch.arange(n, device=device).view(shape)
            for n, shape in ((rows, (-1, 1, 1)), (length, (1, -1, 1)), (length, (1, 1, -1)))
        )
        keep = rule(b, None, q, kv)
        if self.config._attn_implementation == "sdpa":
            return keep[:, None]
        mask = torch.zeros(keep.shape, dtype=self.mask_dtype, device=device)
        return mask.masked_fill_(~keep, torch.finfo(self.mask_dtype).min)[:, None]

    def real_tokens(self, batch: SharedPrefixRows) -> torch.Tensor:
        """Tokens as the plain layout runs them: each shared prompt once per side."""
        real = batch["attention_mask"].bool()
        return real.sum() + ((batch["branch_ids"] == PROMPT) & real).sum()


def attention_rule(segments, branches, positions, window: int | None):
    """mask_mod(b, h, q, kv): may query q of row b attend to key kv? FlexAttention's signature; called with
    broadcastable index tensors it gives the dense mask. q sees kv when kv is at or before it, of the same pair, in
    the prompt or in q's own branch, and, for a sliding window, less than `window` positions back (positions, not row
    slots: rejected restarts at the prompt's end; HF keeps keys with q - k < window, the token itself included)."""

    def mask_mod(b, h, q, kv):
        keep = (kv <= q) & (segments[b, q] == segments[b, kv])
        keep = keep & ((branches[b, kv] == PROMPT) | (branches[b, kv] == branches[b, q]))
        if window is not None:
            keep = keep & (positions[b, q] - positions[b, kv] < window)
        return keep

    return mask_mod


def prefix_sharing_problem(config, implementation: str | None = None) -> str | None:
    """Why this model cannot use prefix sharing exactly (with `implementation`, default its own), or None."""
    implementation = implementation or getattr(config, "_attn_implementation", None)
    if implementation not in EXACT_ATTENTION:
        return (
            f"prefix_sharing needs attn_implementation in {EXACT_ATTENTION} (our mask is the whole mask there); this"
            f" model uses {implementation!r}. Load it with attn_implementation='sdpa' (or 'eager'), use"
            " flex_attention (GPUs), or turn prefix_sharing off."
        )
    if config.model_type not in EXACT_MODEL_TYPES:
        return (
            f"prefix_sharing is verified exact only for model types {EXACT_MODEL_TYPES}, not {config.model_type!r}: "
            "its forward may add to or ignore a custom 4D mask. Turn prefix_sharing off for this model."
        )
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    unknown = set(layer_types) - set(MASK_LAYER_TYPES)
    if unknown:
        return f"prefix_sharing cannot build masks for layer types {sorted(unknown)}; turn it off."
    if "sliding_attention" in layer_types and getattr(config, "sliding_window", None) is None:
        return "The model has sliding_attention layers but config.sliding_window is None."
    return None
