"""SFT rows (a `messages` conversation, as in UltraChat-200k): the checks run before any tokenisation, with errors
that name the source, split and row and say how to fix it. Rows that cannot be trained on are decided once, on the
tokenised conversation (simpo/sft/tokenization.py)."""

from simpo.data.mixer import RowFormat
from simpo.data.validation import describe_row, message_list_problem, row_origin
from simpo.errors import DataError

FIX = (
    "SFT rows need 'messages': a list of {role, content} messages in OpenAI format (roles system, user,"
    " assistant), ending with the assistant's reply."
)


def conversation_problem(row: dict) -> str | None:
    """Why a row is not a usable conversation, or None."""
    problem = message_list_problem(row.get("messages"))
    if problem:
        return f"'messages': {problem}"
    last = row["messages"][-1]["role"]
    if last != "assistant":
        return f"'messages': the last message must be the assistant's reply, not {last!r} (nothing to learn after it)"
    return None


def validate_conversations(dataset, source: str, split: str, origins: list[dict] | None = None) -> None:
    """Raise DataError naming the first malformed row (its file and line where it has them)."""
    if len(dataset) == 0:
        raise DataError(f"{source} [{split}] is empty: remove it from dataset_mixer or fix the data.")
    if "messages" not in dataset.column_names:
        raise DataError(f"{source} [{split}] has no column 'messages' (it has {dataset.column_names}). {FIX}")
    for index, row in enumerate(dataset.select_columns(["messages"])):
        problem = conversation_problem(row)
        if problem:
            where = describe_row(origins[index] if origins else row_origin(source, split, index))
            raise DataError(f"{where}: {problem}. {FIX}")


CONVERSATIONS = RowFormat(("messages",), validate_conversations)
