"""Per-token log-probs of the scored response tokens (see simpo/collator.py for the batch layout).

The plain path reads them off the model's full logits: simple, and the reference every faster path is tested against.
"""

import torch

from simpo.prefix_sharing import shared_prefix_model_inputs


def model_inputs(model, batch: dict) -> dict:
    """The forward arguments for a batch's rows. Prefix-shared rows bring position_ids and need their own mask."""
    if "position_ids" in batch:
        return shared_prefix_model_inputs(model, batch)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


def plain_token_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model on the batch's rows; return (log p(label), mean logit over the vocabulary) per scored token."""
    outputs = model(**model_inputs(model, batch))
    selected = outputs.logits.flatten(0, 1)[batch["score_index"]].float()
    return logps_from_logits(selected, batch["score_labels"]), selected.detach().mean(-1)


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[label] for logits [N, V] and labels [N]."""
    return logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
