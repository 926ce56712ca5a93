"""Checks on preference rows, run before any tokenisation, with errors that say where and how to fix."""

import json
import logging
import os
from collections import Counter

logger = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}


class DataError(ValueError):
    """A problem with the training data, named by source, split and row."""


def message_list_problem(value) -> str | None:
    """Why value is not a list of {role, content} messages, or None when it is."""
    if value is None:
        return "missing (null)"
    if not isinstance(value, list) or not value:
        return f"expected a non-empty list of {{role, content}} messages, got {type(value).__name__}"
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            return f"message {i} is not a {{role, content}} dict"
        if message["role"] not in ROLES:
            return f"message {i} has unknown role {message['role']!r} (use one of {sorted(ROLES)})"
        if not isinstance(message["content"], str):
            return f"message {i} content is {type(message['content']).__name__}, not a string"
    return None


def row_problem(row: dict) -> str | None:
    for column in ("chosen", "rejected"):
        if column not in row:
            return f"missing column '{column}'"
        problem = message_list_problem(row[column])
        if problem:
            return f"'{column}': {problem}"
        if row[column][-1]["role"] != "assistant":
            return f"'{column}': the last message must be the assistant's reply, not {row[column][-1]['role']!r}"
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        if message_list_problem(prompt):
            return f"'prompt': {message_list_problem(prompt)}"
    elif row["chosen"][:-1] != row["rejected"][:-1]:
        return "'chosen' and 'rejected' have different prompt turns (all messages before the last must match)"
    return None


def degenerate_reason(row: dict) -> str | None:
    """Why a well-formed pair teaches nothing (identical or empty replies), or None."""
    chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
    if not chosen.strip() or not rejected.strip():
        return "empty response"
    if chosen == rejected:
        return "identical chosen and rejected responses"
    return None


def validate_rows(dataset, source: str, split: str) -> list[dict]:
    """Raise DataError naming source, split and row index for the first malformed row; return the degenerate rows
    as drop records {source, split, row, reason}."""
    if len(dataset) == 0:
        raise DataError(f"{source} [{split}] is empty: remove it from dataset_mixer or fix the data.")
    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{source} [{split}] has no column {missing[0]!r} (it has {dataset.column_names}): preference data needs"
            " 'chosen' and 'rejected' message lists."
        )
    degenerate = []
    for index, row in enumerate(dataset):
        problem = row_problem(row)
        if problem:
            raise DataError(
                f"{source} [{split}] row {index}: {problem}. Rows need 'chosen' and 'rejected' as lists of "
                "{role, content} messages in OpenAI format, ending with the assistant's reply."
            )
        reason = degenerate_reason(row)
        if reason:
            degenerate.append({"source": source, "split": split, "row": index, "reason": reason})
    return degenerate


def handle_drops(drops: list[dict], on_degenerate: str) -> None:
    """Raise on the first degenerate pair when asked to; otherwise leave the counting to report_drops."""
    if drops and on_degenerate == "error":
        first = drops[0]
        raise DataError(
            f"{first['source']} [{first['split']}] row {first['row']}: {first['reason']} ({len(drops)} such pairs)."
            " Fix the data, or set on_degenerate_pairs: drop to skip them."
        )


def without_rows(dataset, drops: list[dict]):
    """The dataset less the rows named by drop records (unchanged, not re-indexed, when there are none)."""
    if not drops:
        return dataset
    dropped = {d["row"] for d in drops}
    return dataset.select([i for i in range(len(dataset)) if i not in dropped])


def report_drops(drops: list[dict], output_dir: str | None, noun: str = "preference pairs",
                 file_name: str = "dropped_pairs.jsonl") -> None:
    """One summary line in the log, every dropped row in output_dir/<file_name>."""
    if not drops:
        logger.info("No %s dropped.", noun)
        return
    counts = Counter(d["reason"] for d in drops)
    where = ""
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, file_name)
        with open(path, "w") as f:
            f.writelines(json.dumps(d) + "\n" for d in drops)
        where = f"; rows listed in {path}"
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    logger.warning("Dropped %d %s (%s)%s.", len(drops), noun, summary, where)
