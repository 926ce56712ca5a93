"""The plain batch layout: chosen rows then rejected rows, right-padded, one forward.

Every layout (simpo/train/layouts/__init__.py chooses one per run) is the trainer's data collator and hands the trainer
the same description of what to score, a ScoringBatch (simpo/train/layouts/batch.py: input_ids, attention_mask,
score_index, score_labels, score_seq, response_lengths, with their shapes), and, for a batch it collated, the model's
forward arguments (model_inputs) and the real tokens the plain layout would run for it (real_tokens), so that
throughput compares across layouts.
"""

from dataclasses import dataclass

import torch

from simpo.train.layouts.batch import ScoringBatch


def score_targets(labels: torch.Tensor, label_pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token shift: the position before each labelled token scores it. Returns index, labels, row."""
    rows, positions = (labels[:, 1:] != label_pad_token_id).nonzero(as_tuple=True)
    width = labels.shape[1]
    return rows * width + positions, labels[rows, positions + 1], rows


def pad_right(sequences: list[list[int]], value: int, width: int | None = None) -> torch.Tensor:
    width = width or max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], dtype=torch.long)


@dataclass
class PlainLayout:
    pad_token_id: int
    label_pad_token_id: int = -100
    name = "plain"

    def __call__(self, features: list[dict]) -> ScoringBatch:
        ids = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        labels = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        input_ids = pad_right(ids, self.pad_token_id)
        label_tensor = pad_right(labels, self.label_pad_token_id)
        attention_mask = pad_right([[1] * len(s) for s in ids], 0)
        score_index, score_labels, score_seq = score_targets(label_tensor, self.label_pad_token_id)
        return ScoringBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            score_index=score_index,
            score_labels=score_labels,
            score_seq=score_seq,
            response_lengths=torch.bincount(score_seq, minlength=len(ids)),
        )

    def model_inputs(self, batch: ScoringBatch) -> dict:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}

    def real_tokens(self, batch: ScoringBatch) -> torch.Tensor:
        return batch["attention_mask"].sum()
