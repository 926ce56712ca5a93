"""Prefix sharing: one row per pair, [prompt | chosen | rejected], so the prompt is run once instead of twice.

Rejected positions restart at the prompt's end, and a custom mask lets rejected see the prompt but not chosen, so
every response token sees exactly what it sees in the plain layout (simpo/collator.py): same logits up to rounding.
With padding_free, several such pairs share a row (block-diagonal mask, positions restart per pair).

Transformers 5.24 passes a 4D mask through untouched (no causal part, no sliding window, no padding added), so the
mask below is the whole mask (measured in the shared note prefix-sharing-on-transformers5.md).
"""

from dataclasses import dataclass

import torch

from simpo.collator import pad_right

PROMPT, CHOSEN, REJECTED = 0, 1, 2
# Kernels that take a 4D additive mask as the whole mask. flash_attention_* ignore a tensor mask (varlen needs
# cu_seqlens and cannot express "rejected sees the prompt but not chosen"); flex treats it as a bias and crashed
# on CPU. Refuse them rather than train on a silently different mask.
EXACT_ATTENTION = ("eager", "sdpa")
# Families whose forward was checked to honour position_ids and a 4D (or per-layer-type dict of 4D) mask with
# nothing added on top. Others may add ALiBi from a 2D mask, chunked or bidirectional layers, ...: unchecked.
EXACT_MODEL_TYPES = ("llama", "mistral", "gemma2", "qwen2")
MASK_LAYER_TYPES = ("full_attention", "sliding_attention")


def shared_prefix_length(feature: dict, label_pad_token_id: int) -> int:
    """Longest common prefix of the two rows, stopping before the first labelled token of either side.

    The prompts agree except when a BPE merge across the prompt/response boundary changed the last prompt token on
    one side; the differing tokens then go to their branch, unlabelled, just as the plain layout leaves them unscored.
    """
    chosen, rejected = feature["chosen_input_ids"], feature["rejected_input_ids"]
    limit = min(first_label(feature["chosen_labels"], label_pad_token_id),
                first_label(feature["rejected_labels"], label_pad_token_id))
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
    a single row when it is None. Rows are right-padded to equal length; each pad token is its own segment.
    """

    pad_token_id: int
    label_pad_token_id: int = -100
    padding_free: bool = False
    max_tokens_per_row: int | None = None
    config: object = None  # the model's config (a PretrainedConfig): which masks, which window, which kernel
    mask_dtype: torch.dtype = torch.float32  # the dtype attention scores come out in (bf16 under bf16 autocast)

    @property
    def name(self) -> str:
        return "prefix sharing" + (" + padding-free" if self.padding_free else "")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        num_pairs = len(features)
        prefixes = [shared_prefix_length(f, self.label_pad_token_id) for f in features]
        lengths = [len(f["chosen_input_ids"]) + len(f["rejected_input_ids"]) - p for f, p in zip(features, prefixes)]
        rows = self.assign_rows(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)

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
        return {
            "input_ids": pad_right(ids, self.pad_token_id),
            "attention_mask": pad_right(real, 0),
            "position_ids": pad_right(pos, 0),
            "segment_ids": torch.tensor(seg, dtype=torch.long),
            "branch_ids": pad_right(branch, PROMPT),
            "score_index": torch.tensor(score_index, dtype=torch.long),
            "score_labels": torch.tensor(score_labels, dtype=torch.long),
            "score_seq": score_seq,
            "response_lengths": torch.bincount(score_seq, minlength=2 * num_pairs),
        }

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

    def model_inputs(self, batch: dict) -> dict:
        """input_ids, position_ids and the mask: one [R, 1, L, L] mask, with the window built in when
        config.sliding_window is set (Mistral), since none is added later; models with config.layer_types (Gemma2,
        Qwen2) take {"full_attention": M, "sliding_attention": M_sw}."""
        problem = prefix_sharing_problem(self.config)  # refuses (never approximates) what the mask cannot express
        if problem:
            raise ValueError(problem)
        config = self.config
        segments, branches, positions = batch["segment_ids"], batch["branch_ids"], batch["position_ids"]
        rows = torch.arange(segments.shape[1], device=segments.device)
        # Built once per forward, as bool [R, L, L] and then one mask per layer type; every layer reuses it.
        allowed = (rows[None, :] <= rows[:, None]) & (segments[:, :, None] == segments[:, None, :])
        key_branch = branches[:, None, :]
        allowed &= (key_branch == PROMPT) | (key_branch == branches[:, :, None])
        # The window is counted in positions, not row slots (rejected restarts at the prompt end): HF keeps keys with
        # q - k < window, the token itself included.
        window = getattr(config, "sliding_window", None)
        in_window = positions[:, :, None] - positions[:, None, :] < window if window is not None else None
        layer_types = getattr(config, "layer_types", None)
        if layer_types:
            mask = {t: self.kernel_mask(allowed & in_window if t == "sliding_attention" else allowed)
                    for t in sorted(set(layer_types))}
        else:
            mask = self.kernel_mask(allowed & in_window if in_window is not None else allowed)
        return {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": positions, "use_cache": False}

    def kernel_mask(self, keep: torch.Tensor) -> torch.Tensor:
        """[R, 1, L, L] as the attention kernel takes it: sdpa a bool mask (True attends), eager an additive float
        one (0 or the dtype's min). Never a bool for eager: it adds the mask to the scores, as 0/1, without error."""
        if self.config._attn_implementation == "sdpa":
            return keep[:, None]
        mask = torch.zeros(keep.shape, dtype=self.mask_dtype, device=keep.device)
        return mask.masked_fill_(~keep, torch.finfo(self.mask_dtype).min)[:, None]

    def real_tokens(self, batch: dict) -> torch.Tensor:
        """Tokens as the plain layout runs them: each shared prompt once per side."""
        real = batch["attention_mask"].bool()
        return real.sum() + ((batch["branch_ids"] == PROMPT) & real).sum()


def prefix_sharing_problem(config) -> str | None:
    """Why this model cannot use prefix sharing exactly, or None when it can."""
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in EXACT_ATTENTION:
        return (
            f"prefix_sharing needs attn_implementation in {EXACT_ATTENTION} (a 4D float mask is the whole mask "
            f"there); this model uses {implementation!r}. Load it with attn_implementation='sdpa' (or 'eager'), "
            "or turn prefix_sharing off."
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
