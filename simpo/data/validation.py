"""Checks on preference rows: malformed rows stop the run before any tokenisation, with errors that say where and how
to fix; pairs that teach nothing are dropped (or stop the run), decided once, on the tokenised pair."""

import json
import logging
import os
import unicodedata
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


def row_origin(source: str, split: str, index: int, file: str | None = None, line: int | None = None) -> dict:
    """Where a row came from, as a user finds it: the local `file` it was read from and its 1-based `line` there
    (for a .parquet file: its 1-based row in the file), and always its 0-based `index` in that split of that source
    (the only way to name a row of a hub or save_to_disk dataset)."""
    return {"source": source, "split": split, "index": index, "file": file, "line": line}


def describe_row(origin: dict) -> str:
    """A row as its user finds it: `data/x/train.jsonl line 6`, `data/x/train-00001.parquet row 6`, or (a hub or
    save_to_disk dataset) `org/name [train_prefs] row index 5 (0-based)`."""
    file, line = origin.get("file"), origin.get("line")
    if file and line:
        return f"{file} {'row' if file.endswith('.parquet') else 'line'} {line}"
    return f"{origin['source']} [{origin['split']}] row index {origin['index']} (0-based)"


@dataclass(frozen=True)
class DroppedRow:
    """A row left out of training (a preference pair, an SFT conversation): where it came from (row_origin: its file
    and 1-based line where it has them, its 0-based index in that split of that source) and why."""

    source: str
    split: str
    index: int
    file: str | None
    line: int | None
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
        if row["chosen"][:-1] != row["rejected"][:-1]:
            return (
                "'chosen' and 'rejected' continue the 'prompt' with different turns before their replies: the turns"
                " before the last reply are the prompt both replies answer, so they must match (or hold the reply"
                " alone)"
            )
    elif len(row["chosen"]) < 2:
        return (
            "'chosen' has no prompt turns before the reply: put the user's message(s) before the assistant's"
            " reply in 'chosen' and 'rejected', or give 'prompt' as a message list"
        )
    elif row["chosen"][:-1] != row["rejected"][:-1]:
        return "'chosen' and 'rejected' have different prompt turns (all messages before the last must match)"
    return None


def visible(text: str) -> str:
    """The text without whitespace and invisible format characters (zero-width space U+200B, joiners, BOM, soft
    hyphen: Unicode category Cf), which make a reply look non-empty to str.strip() and say nothing."""
    return "".join(c for c in text if not c.isspace() and unicodedata.category(c) != "Cf")


def degenerate_reason(pair: dict, tokens: dict, empty_reply: str, label_pad_token_id: int) -> str | None:
    """Why a pair teaches nothing, or None; the one place that decides it, on the rendered strings (pair: prompt,
    chosen, rejected) and their tokens (tokenize_row's output). empty_reply is the template's rendering of an empty
    assistant turn after a prompt: a response that renders as it, whitespace and invisible characters aside, has no
    content."""
    if any(visible(pair[side]) == visible(empty_reply) for side in ("chosen", "rejected")):
        return "empty response"
    if tokens["chosen_input_ids"] == tokens["rejected_input_ids"]:
        return "identical chosen and rejected responses"
    if not all(any(t != label_pad_token_id for t in tokens[f"{side}_labels"][1:]) for side in ("chosen", "rejected")):
        return "response with no token to score"
    return None


def validate_rows(dataset, source: str, split: str, origins: list[dict] | None = None) -> None:
    """Raise DataError naming the first malformed row (its file and line, see describe_row; `origins`: row_origin of
    each row, by default its index only)."""
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
            where = describe_row(origins[index] if origins else row_origin(source, split, index))
            raise DataError(
                f"{where}: {problem}. Rows need 'chosen' and 'rejected' as lists of "
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
            f"All {total} {noun} of {drops[0].split} were dropped ({reasons}), e.g. {describe_row(asdict(drops[0]))}:"
            " nothing would be left. Fix the data, or raise max_length if they were cut to nothing."
        )
    if drops and on_degenerate == "error":
        first = drops[0]
        raise DataError(
            f"{describe_row(asdict(first))}: {first.reason} ({len(drops)} such {noun})."
            f" Fix the data, or set {key}: drop to skip them."
        )


def write_records(records: list, output_dir: str | None, file_name: str) -> str | None:
    """Each record (a dataclass) as one JSON line of output_dir/<file_name>; the path, or None when there is no
    output_dir. No record: an earlier launch's file is removed (it would tell of rows this launch did not have)."""
    if not output_dir:
        return None
    path = os.path.join(output_dir, file_name)
    if not records:
        if os.path.exists(path):
            os.remove(path)
        return None
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(asdict(record)) + "\n" for record in records)
    return path


def report_drops(
    drops: list[DroppedRow],
    output_dir: str | None,
    noun: str = "preference pairs",
    file_name: str = "dropped_pairs.jsonl",
) -> None:
    """One summary line in the log, every dropped row in output_dir/<file_name>."""
    path = write_records(drops, output_dir, file_name)
    if not drops:
        logger.info("No %s dropped.", noun)
        return
    counts = Counter(d.reason for d in drops)
    where = f"; rows listed in {path}" if path else ""
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    logger.warning("Dropped %d %s (%s)%s.", len(drops), noun, summary, where)


CUTS_FILE = "truncated_pairs.jsonl"


@dataclass(frozen=True)
class CutRow:
    """A pair that truncation cut to fit max_length: where it came from (row_origin) and, for each part it cut,
    [its tokens, the tokens kept] (None: not cut). A reply cut loses its end, EOS included."""

    source: str
    split: str
    index: int
    file: str | None
    line: int | None
    prompt: list[int] | None = None
    chosen: list[int] | None = None
    rejected: list[int] | None = None


def cut_summary(cuts: list[CutRow], pairs: int) -> str:
    """`3 prompts and 2 replies cut (of 600 pairs)`, or `none cut`."""
    if not cuts:
        return f"none cut (of {pairs} pairs)"
    prompts = sum(cut.prompt is not None for cut in cuts)
    replies = sum((cut.chosen is not None) + (cut.rejected is not None) for cut in cuts)
    return f"{prompts} prompts and {replies} replies cut (of {pairs} pairs)"


def report_cuts(cuts: list[CutRow], pairs: int, name: str, max_length: int, max_prompt_length: int) -> None:
    """A warning naming how many prompts and replies of `name` truncation cut, and the first one."""
    if not cuts:
        return
    first = cuts[0]
    parts = ", ".join(
        f"{part} {getattr(first, part)[0]} -> {getattr(first, part)[1]} tokens"
        for part in ("prompt", "chosen", "rejected")
        if getattr(first, part) is not None
    )
    logger.warning(
        "Truncated %s to max_length %d (prompts to max_prompt_length %d first): %s, e.g. %s (%s). Raise max_length"
        " to keep them whole; the rows are listed in output_dir/%s.",
        name,
        max_length,
        max_prompt_length,
        cut_summary(cuts, pairs),
        describe_row(asdict(first)),
        parts,
        CUTS_FILE,
    )
