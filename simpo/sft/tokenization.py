"""A conversation -> token ids and labels for SFT: every assistant turn labelled, nothing else.

The text is what SimPO training feeds the model for the same conversation (simpo/data/chat_templates.py): the whole
conversation rendered with the chat template, each assistant turn being what the template writes after the turns
before it (whose rendering must start the conversation's), so each assistant header belongs to the labelled turn.
Tokenisation follows simpo/data/tokenization.py: the joint text tokenised once without special tokens, a token
straddling a turn boundary goes to the turn after it, BOS first once, EOS last once (labelled, as the end of the last
reply). A conversation made of one exchange therefore gets exactly SimPO's chosen ids and labels.
"""

from simpo.data.chat_templates import maybe_insert_system_message, render, special_token_in_text, special_tokens
from simpo.data.mixer import ORIGIN, map_fingerprint
from simpo.data.tokenization import answer_start
from simpo.data.validation import DroppedRow, describe_row, handle_drops, row_origin
from simpo.errors import TemplateError

IGNORE = -100  # the label of tokens that carry no loss, as TRL's collator and transformers' loss expect


def render_conversation(messages: list[dict], tokenizer, auto_insert_empty_system_msg: bool = True):
    """(text, [(start, end) character span of each assistant turn])."""
    turns = maybe_insert_system_message(messages, tokenizer) if auto_insert_empty_system_msg else messages
    text = render(turns, tokenizer)
    spans = []
    for k, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        before = render(turns[:k], tokenizer) if k else ""
        upto = text if k == len(turns) - 1 else render(turns[: k + 1], tokenizer)
        if not (text.startswith(before) and text.startswith(upto)):
            raise TemplateError(
                f"The chat template renders the first {k if text.startswith(before) else k + 1} turns of a"
                " conversation differently from the start of the whole conversation, so its assistant turns cannot"
                " be located for the loss (a template that writes an earlier reply otherwise than the last one, as"
                " Qwen3's drops the reasoning of earlier replies). Use a template whose rendering of a conversation's"
                " beginning is a prefix of the whole (Llama-3, ChatML, Zephyr, Gemma and simpo's Mistral templates"
                f" are), or train on conversations with one reply. Conversation starts: {text[:200]!r}"
            )
        spans.append((len(before), len(upto)))
    return text, spans


def tokenize_conversation(
    messages: list[dict], tokenizer, max_length: int | None, auto_insert_empty_system_msg: bool = True, specials=None
) -> dict:
    """{input_ids, labels, drop_reason}: labels are the ids on assistant turns and IGNORE elsewhere; the sequence is
    cut to max_length keeping its start (None: not cut, as when bfd_split packing carries the rest into another
    row). drop_reason, the one place that decides it, is set for an empty assistant reply (it would train the model to
    end its turn at once) and when no labelled token is left to predict."""
    text, spans = render_conversation(messages, tokenizer, auto_insert_empty_system_msg)
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]
    ids = encode(text)
    token_at = lambda char: len(ids) if char == len(text) else answer_start(encode(text[:char]), ids)
    labelled = [False] * len(ids)
    for start, end in spans:
        for t in range(token_at(start), token_at(end)):
            labelled[t] = True

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids, labelled = [bos] + ids, [False] + labelled
    if eos is not None and ids[-1] != eos:
        ids, labelled = ids + [eos], labelled + [True]
    ids, labelled = ids[:max_length], labelled[:max_length]
    labels = [t if on else IGNORE for t, on in zip(ids, labelled)]
    special = special_token_in_text({"messages": messages}, specials, ("messages",)) if specials else ""
    if special:  # unless allow_special_tokens_in_text (specials None)
        reason = special
    elif any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        reason = "empty assistant reply"
    else:  # position 0 predicts nothing (labels shift by one): a row needs a labelled token after it
        reason = "" if any(labelled[1:]) else "assistant turns truncated away (max_length)"
    return {"input_ids": ids, "labels": labels, "drop_reason": reason}


def tokenize_row(row: dict, index: int, name: str, **kwargs) -> dict:
    origin = row.get(ORIGIN) or row_origin(name, name, index)
    try:
        out = tokenize_conversation(row["messages"], **kwargs)
    except TemplateError as err:
        raise TemplateError(f"{describe_row(origin)}: {err}") from err
    return {
        **out,
        ORIGIN: origin,
        "length": len(out["input_ids"]),
        "num_labelled": sum(t != IGNORE for t in out["labels"]),
    }


def tokenize_conversations(
    dataset,
    tokenizer,
    max_length: int | None,
    name: str,
    auto_insert_empty_system_msg: bool = True,
    num_proc: int | None = None,
    on_degenerate_rows: str = "drop",
    allow_special_tokens_in_text: bool = False,
):
    """(dataset of input_ids/labels, DroppedRow records of the rows left out, counts {rows, tokens, labelled,
    longest} of the rows kept). A drop names the row's origin from the mixer, or `name` and its index; with
    on_degenerate_rows: error the first one raises."""
    if dataset is None:
        return None, [], {}
    kwargs = {
        "tokenizer": tokenizer,
        "max_length": max_length,
        "name": name,
        "auto_insert_empty_system_msg": auto_insert_empty_system_msg,
        "specials": None if allow_special_tokens_in_text else special_tokens(tokenizer),
    }
    dataset = dataset.map(
        tokenize_row,
        fn_kwargs=kwargs,
        with_indices=True,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        new_fingerprint=map_fingerprint(dataset, kwargs),
        desc=f"Tokenizing {name} conversations",
    )
    reasons = dataset["drop_reason"]
    drops = [DroppedRow(**origin, reason=reason) for origin, reason in zip(dataset[ORIGIN], reasons) if reason]
    handle_drops(drops, on_degenerate_rows, total=len(reasons), key="on_degenerate_rows", noun="rows")
    if drops:
        dataset = dataset.select([i for i, reason in enumerate(reasons) if not reason])
    lengths = dataset["length"]
    counts = {
        "rows": len(dataset),
        "tokens": sum(lengths),
        "labelled": sum(dataset["num_labelled"]),
        "longest": max(lengths, default=0),
    }
    return dataset.remove_columns(["drop_reason", ORIGIN, "length", "num_labelled"]), drops, counts
