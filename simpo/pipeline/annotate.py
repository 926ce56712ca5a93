"""`simpo-annotate PIPELINE.yaml [--key=value ...]`: a reward model's score for every (prompt, response) that
simpo-generate wrote, resumable and data-parallel under `accelerate launch`.

The reward model is any AutoModelForSequenceClassification with one output (its logit is the score), or a model
with a custom head that returns a `score` (ArmoRM: `reward_trust_remote_code: true`). Each conversation (the prompt's
turns and the response as the assistant's turn) is rendered with the reward model's own chat template. Responses
are scored in batches of similar length, right-padded with a token id that occurs in no conversation, so models that
find the last token by the pad id score what they would score unpadded. Responses longer than the reward model's
context are not scored (score null, counted in the log; simpo-binarise leaves them out).

With `reward_function: package.module:function` instead of a reward model, a Python function scores each reply
(verifiable rewards: an exact answer, unit tests; simpo/pipeline/rewards.py).

Writes OUTPUT_DIR/annotations/<side>.jsonl: the generation rows plus "scores", one per response.
"""

import logging
import os

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from simpo.errors import ConfigError, DataError, TemplateError
from simpo.models.loading import from_pretrained, resolve_dtype
from simpo.pipeline.backends import process_device
from simpo.pipeline.config import parse_pipeline_args
from simpo.pipeline.rewards import function_scores
from simpo.pipeline.work_units import (
    Unit,
    UnitStore,
    check_settings,
    file_fingerprint,
    previous_stage_sides,
    process_rank,
    read_jsonl,
    run_units,
    write_jsonl,
)
from simpo.reporting.logs import setup_logging
from simpo.run.commands import report_input_errors
from simpo.run.folder_lock import lock_folder

logger = logging.getLogger("simpo")
DESCRIPTION = (
    "Score every sampled reply with a reward model (on-policy data, step 2 of 3), resumable and data-parallel."
)


def conversation_ids(row: dict, response: str, tokenizer) -> list[int]:
    """The reward model's tokens for a prompt and one response, as its chat template renders them."""
    messages = row["messages"] + [{"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes BOS when the model wants it


def plan_units(lengths: dict[str, list[int]], batch_size: int, limit: int | None) -> list[Unit]:
    """Per side, the conversations that fit the reward model, ordered by length and cut into fixed batches."""
    units = []
    for side, side_lengths in lengths.items():
        fits = [i for i, n in enumerate(side_lengths) if limit is None or n <= limit]
        order = sorted(fits, key=lambda i: side_lengths[i])
        units += [
            Unit(f"{side}/{b:06d}", side, tuple(order[i : i + batch_size]))
            for b, i in enumerate(range(0, len(order), batch_size))
        ]
    return units


def unused_token_id(sequences, vocab_size: int, preferred: int | None) -> int:
    """`preferred` (the tokenizer's pad id) if it is inside the embedding and in no sequence, else the highest id
    below vocab_size that occurs in none (a tokenizer's pad may be an added token past the embedding, id vocab_size:
    ArmoRM's may be)."""
    used = {t for ids in sequences for t in ids}
    if preferred is not None and 0 <= preferred < vocab_size and preferred not in used:
        return preferred
    free = next((t for t in range(vocab_size - 1, -1, -1) if t not in used), None)
    if free is None:
        raise DataError(
            f"Every id below the reward model's vocab_size ({vocab_size}) occurs in the conversations:"
            " none is left to pad with."
        )
    return free


class RewardModel:
    def __init__(self, name: str, revision: str, trust_remote_code: bool, dtype: str, pad_id: int):
        self.device = process_device()
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                name, revision=revision, trust_remote_code=trust_remote_code, dtype=resolve_dtype(dtype)
            )
            .to(self.device)
            .eval()
        )
        self.model.config.get_text_config().pad_token_id = pad_id
        self.pad_id = pad_id

    @torch.no_grad()
    def score(self, sequences: list[list[int]]) -> list[float]:
        width = max(map(len, sequences))
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(sequences):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
        output = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        return scores_of(output, len(sequences))


def scores_of(output, n: int) -> list[float]:
    """One score per sequence: a custom head's `score` (ArmoRM), else the classifier's single logit."""
    values = getattr(output, "score", None)
    values = (output.logits if values is None else values).float().reshape(n, -1)
    if values.shape[1] != 1:
        raise ConfigError(
            f"The reward model gives {values.shape[1]} values per response and no `score`: use a model with one"
            " output (num_labels=1) or one whose forward returns `score` (ArmoRM, with reward_trust_remote_code)."
        )
    return values[:, 0].tolist()


@report_input_errors("simpo-annotate")
def main(argv: list[str] | None = None) -> None:
    _, _, args = parse_pipeline_args(argv, "simpo-annotate", DESCRIPTION)
    rank, world = process_rank()
    setup_logging(rank == 0)
    source = os.path.join(args.output_dir, "generations")
    present = previous_stage_sides(args.output_dir, "generations", "simpo-generate", "simpo-annotate", rank == 0)
    if rank == 0:
        lock_folder(args.output_dir, "simpo-annotate")
    sides = {side: read_jsonl(os.path.join(source, f"{side}.jsonl"), "simpo-generate") for side in present}
    folder = os.path.join(args.output_dir, "annotations")
    if args.reward_function:
        scores = function_scores(args, sides, source, folder)
        if scores is not None:
            write_annotations(folder, sides, scores, f"left unscored by {args.reward_function} (None)")
        return
    tokenizer = from_pretrained(
        AutoTokenizer,
        args.reward_model,
        "reward_model",
        revision=args.reward_model_revision,
        trust_remote_code=args.reward_trust_remote_code,
    )
    if not tokenizer.chat_template:
        raise TemplateError(
            f"The reward model's tokenizer ({args.reward_model}) has no chat template to render the conversations with."
        )
    config = AutoConfig.from_pretrained(
        args.reward_model, revision=args.reward_model_revision, trust_remote_code=args.reward_trust_remote_code
    )
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    # One flat list per side: response k of row r is pair r * K + k.
    pairs = {
        side: [conversation_ids(row, reply, tokenizer) for row in rows for reply in row["responses"]]
        for side, rows in sides.items()
    }
    dtype = (
        args.reward_dtype if args.reward_dtype != "auto" else ("bfloat16" if torch.cuda.is_available() else "float32")
    )
    pad_id = unused_token_id(
        (ids for side in pairs.values() for ids in side), config.get_text_config().vocab_size, tokenizer.pad_token_id
    )
    check_settings(
        folder,
        {
            "reward_model": [args.reward_model, args.reward_model_revision, dtype],
            "pad_id": pad_id,
            "reward_batch_size": args.reward_batch_size,
            "generations": {side: file_fingerprint(os.path.join(source, f"{side}.jsonl")) for side in sides},
        },
    )
    units = plan_units({side: list(map(len, ids)) for side, ids in pairs.items()}, args.reward_batch_size, limit)
    store = UnitStore(os.path.join(folder, "units"))
    model = None

    def work(unit: Unit) -> list:
        nonlocal model
        model = model or RewardModel(
            args.reward_model, args.reward_model_revision, args.reward_trust_remote_code, dtype, pad_id
        )
        return model.score([pairs[unit.split][i] for i in unit.rows])

    if not run_units(units, store, work, desc="scoring"):
        return
    scores = {side: [None] * len(side_pairs) for side, side_pairs in pairs.items()}
    for unit in units:
        for i, value in zip(unit.rows, store.read(unit)):
            scores[unit.split][i] = value
    write_annotations(folder, sides, scores, f"too long for the reward model ({limit} tokens) and left unscored")


def write_annotations(folder: str, sides: dict[str, list[dict]], scores: dict[str, list], unscored: str) -> None:
    """The generation rows plus their scores (flat per side: response k of row r is r * K + k)."""
    for side, rows in sides.items():
        k = len(rows[0]["responses"])
        out = [{**row, "scores": scores[side][r * k : (r + 1) * k]} for r, row in enumerate(rows)]
        write_jsonl(os.path.join(folder, f"{side}.jsonl"), out)
        none = scores[side].count(None)
        logger.info("%s: %d responses scored, %d %s", side, len(scores[side]) - none, none, unscored)


if __name__ == "__main__":
    main()
