"""Checks on preference rows: malformed rows stop the run before any tokenisation, with errors that say where and how
to fix; pairs that teach nothing are dropped (or stop the run), decided once, on the tokenised pair."""

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass

from simpo.errors import DataError

logger = logging.getLogger(__name__)

ROLES = {"system", "user", "assistant"}
MESSAGE_KEYS = ("role", "content")  # all a message is trained on; empty extra keys are dropped (role_and_content)


def is_empty(value) -> bool:
    """An extra message key that says nothing: null, "", [] or {} (exports write `"tool_calls": []`, `"name": null`)."""
    return value is None or (isinstance(value, (str, list, dict)) and not value)


def role_and_content(messages):
    """A message list reduced to role and content (what validation allowed: other keys are empty); anything else
    (a prompt string, None) as it is."""
    if not isinstance(messages, list):
        return messages
    return [{key: message[key] for key in MESSAGE_KEYS} for message in messages]


@dataclass(frozen=True)
class DroppedRow:
    """A row left out of training (a preference pair, an SFT conversation): where it came from (the row of that
    split of that source) and why."""

    source: str
    split: str
    row: int
    reason: str


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
        extra = next((key for key in message if key not in MESSAGE_KEYS and not is_empty(message[key])), None)
        if extra is not None:
            return (
                f"message {i} has {extra!r} = {message[extra]!r}, which simpo does not train on (only role and"
                " content; empty extra keys are ignored): remove the key or fold it into the content"
            )
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
        if any(row[column][: len(prompt)] == prompt for column in ("chosen", "rejected")):
            return (
                "'chosen' or 'rejected' repeats the 'prompt' messages, which would be scored as the response:"
                " with 'prompt' as a message list, they hold the reply alone"
            )
    elif len(row["chosen"]) < 2:
        return (
            "'chosen' has no prompt turns before the reply: put the user's message(s) before the assistant's"
            " reply in 'chosen' and 'rejected', or give 'prompt' as a message list"
        )
    elif row["chosen"][:-1] != row["rejected"][:-1]:
        return "'chosen' and 'rejected' have different prompt turns (all messages before the last must match)"
    return None


def degenerate_reason(pair: dict, tokens: dict, empty_reply: str, label_pad_token_id: int) -> str | None:
    """Why a pair teaches nothing, or None; the one place that decides it, on the rendered strings (pair: prompt,
    chosen, rejected) and their tokens (tokenize_row's output). empty_reply is the template's rendering of an empty
    assistant turn: a response that renders as it, whitespace aside, has no content."""
    if any(pair[side].split() == empty_reply.split() for side in ("chosen", "rejected")):
        return "empty response"
    if tokens["chosen_input_ids"] == tokens["rejected_input_ids"]:
        return "identical chosen and rejected responses"
    if not all(any(t != label_pad_token_id for t in tokens[f"{side}_labels"][1:]) for side in ("chosen", "rejected")):
        return "response with no token to score"
    return None


def validate_rows(dataset, source: str, split: str) -> None:
    """Raise DataError naming source, split and row index for the first malformed row."""
    if len(dataset) == 0:
        raise DataError(f"{source} [{split}] is empty: remove it from dataset_mixer or fix the data.")
    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{source} [{split}] has no column {missing[0]!r} (it has {dataset.column_names}): preference data needs"
            " 'chosen' and 'rejected' message lists."
        )
    for index, row in enumerate(dataset):
        problem = row_problem(row)
        if problem:
            raise DataError(
                f"{source} [{split}] row {index}: {problem}. Rows need 'chosen' and 'rejected' as lists of "
                "{role, content} messages in OpenAI format, ending with the assistant's reply."
            )


def handle_drops(
    drops: list[DroppedRow], on_degenerate: str, total: int, key: str = "on_degenerate_pairs", noun: str = "pairs"
) -> None:
    """Raise on the first dropped row when `key` (its value on_degenerate) says error, or when every one of the
    `total` rows was dropped (nothing would be left to train or evaluate on); otherwise leave the counting to
    report_drops."""
    if drops and len(drops) == total:
        reasons = ", ".join(f"{n} {reason}" for reason, n in Counter(d.reason for d in drops).most_common())
        raise DataError(
            f"All {total} {noun} of {drops[0].split} were dropped ({reasons}), e.g. {drops[0].source} row"
            f" {drops[0].row}: nothing would be left. Fix the data, or raise max_length if they were cut to nothing."
        )
    if drops and on_degenerate == "error":
        first = drops[0]
        raise DataError(
            f"{first.source} [{first.split}] row {first.row}: {first.reason} ({len(drops)} such {noun})."
            f" Fix the data, or set {key}: drop to skip them."
        )


def report_drops(
    drops: list[DroppedRow],
    output_dir: str | None,
    noun: str = "preference pairs",
    file_name: str = "dropped_pairs.jsonl",
) -> None:
    """One summary line in the log, every dropped row in output_dir/<file_name>."""
    if not drops:
        logger.info("No %s dropped.", noun)
        if output_dir and os.path.exists(os.path.join(output_dir, file_name)):
            os.remove(os.path.join(output_dir, file_name))  # an earlier launch's list would tell of drops now gone
        return
    counts = Counter(d.reason for d in drops)
    where = ""
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, file_name)
        with open(path, "w") as f:
            f.writelines(json.dumps(asdict(d)) + "\n" for d in drops)
        where = f"; rows listed in {path}"
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    logger.warning("Dropped %d %s (%s)%s.", len(drops), noun, summary, where)
