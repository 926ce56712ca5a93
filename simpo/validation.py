"""Checks on preference rows, run before any tokenisation, with errors that say where and how to fix."""

ROLES = {"system", "user", "assistant"}


class DataError(ValueError):
    """A problem with the training data, named by source, split and row."""


def message_list_problem(value) -> str | None:
    """Why value is not a list of {role, content} messages, or None when it is."""
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
    if isinstance(prompt, list) and message_list_problem(prompt):
        return f"'prompt': {message_list_problem(prompt)}"
    return None


def validate_rows(dataset, source: str, split: str) -> None:
    """Raise DataError naming source, split and row index for the first malformed row."""
    if len(dataset) == 0:
        raise DataError(f"{source} [{split}] is empty: remove it from dataset_mixer or fix the data.")
    for index, row in enumerate(dataset):
        problem = row_problem(row)
        if problem:
            raise DataError(
                f"{source} [{split}] row {index}: {problem}. Rows need 'chosen' and 'rejected' as lists of "
                "{role, content} messages in OpenAI format, ending with the assistant's reply."
            )
