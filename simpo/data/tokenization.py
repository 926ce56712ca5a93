"""Token ids and labels of one preference row (prompt, chosen, rejected strings), as the reference builds them, and
the ids a model is prompted with for generation, derived from the same rendering and tokenisation."""

import json

from simpo.data.chat_templates import RENDER_PROBLEM, maybe_insert_system_message, render, render_prompt, render_replies
from simpo.data.mixer import ORIGIN, map_fingerprint
from simpo.data.validation import CutRow, DroppedRow, degenerate_reason, handle_drops, report_cuts, row_origin
from simpo.errors import ConfigError, TemplateError

# Stands for the assistant's content when the response header is read off the template.
CONTENT_MARK = "<<simpo-content>>"
# A typical first word of a reply: text the header's last token may merge with (e.g. SentencePiece's "▁Hello").
CONTENT_PROBE = "Hello"


def split_prompt_answer(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Tokenise prompt + answer jointly and split at the prompt's length.

    Tokenising the joint string keeps boundary merges the model will see; when the prompt's own tokens are not a
    prefix of the joint tokens (a merge across the boundary), the split moves back one token.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    start = answer_start(prompt_ids, full_ids)
    return full_ids[:start], full_ids[start:]


def answer_start(prompt_ids: list[int], full_ids: list[int]) -> int:
    """Where the answer starts in the joint tokens: after the prompt's own tokens, or one token earlier when they are
    not a prefix of the joint tokens (a merge across the boundary; the merged token goes to the answer)."""
    start = len(prompt_ids)
    return start if full_ids[:start] == prompt_ids else start - 1


def bos_once(ids: list[int], bos: int | None) -> list[int]:
    """BOS first, exactly once (the template may already have written it; a tokenizer may have none)."""
    return ids if bos is None or (ids and ids[0] == bos) else [bos] + ids


def response_header(tokenizer) -> str:
    """The text the template puts before the assistant's content in a reply, as training renders it after a prompt
    (e.g. `<|start_header_id|>assistant<|end_header_id|>\n\n`, `<start_of_turn>model\n`, Mistral's leading space);
    where the template's own generation prompt begins that text but stops short of it (Qwen3's, before the
    `<think>` block the model writes), the generation prompt."""
    turns = maybe_insert_system_message([{"role": "user", "content": CONTENT_PROBE}], tokenizer)
    prompt, replies, problem, detail = render_replies(
        turns, [{"role": "assistant", "content": CONTENT_MARK}], tokenizer, False
    )
    if problem:
        raise TemplateError(f"{problem}: {detail}.")
    rendered = replies[0]
    if rendered.count(CONTENT_MARK) != 1:
        raise TemplateError(
            "The chat template does not render an assistant turn's content verbatim, so where a reply starts cannot"
            f" be found (rendered {rendered!r}): use a template that writes message['content'] (trim is fine) once."
        )
    header = rendered.split(CONTENT_MARK)[0]
    generation = render(turns, tokenizer, generation_prompt=True)[len(prompt) :]
    return generation if generation and header.startswith(generation) else header


def generation_prompt_ids(prompt_turns: list[dict], tokenizer, auto_insert_empty_system_msg: bool = True) -> list[int]:
    """The token ids a model is prompted with for `prompt_turns`: the ids training builds for the same conversation
    (prompt rendered without a generation prompt, the response rendered alone, both tokenised jointly, BOS once), up
    to where the assistant's content begins.

    The header's last token is left for the model to generate when training would merge it with the reply's first
    word (split_prompt_answer's rule, applied at the header/content boundary).
    """
    prompt = render_prompt(prompt_turns, tokenizer, auto_insert_empty_system_msg)
    ids, _ = split_prompt_answer(tokenizer, prompt + response_header(tokenizer), CONTENT_PROBE)
    return bos_once(ids, tokenizer.bos_token_id)


def tokenize_row(
    row: dict,
    tokenizer,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: str = "keep_end",
    label_pad_token_id: int = -100,
    cuts: dict | None = None,
) -> dict:
    """prompt/chosen/rejected strings -> {chosen,rejected}_{input_ids,labels} and prompt_length.

    BOS is put first once (when the tokenizer has one), EOS last once on each response. If prompt plus the longer
    response exceed max_length the prompt is cut to max_prompt_length (keep_end keeps its last tokens, after BOS);
    if still too long each response is cut to max_length - max_prompt_length. `cuts`, when given, receives what was
    cut: {part: [tokens before, tokens kept]} for each of prompt, chosen and rejected that was.
    """
    cuts = {} if cuts is None else cuts
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    sides = {}
    for side in ("chosen", "rejected"):
        prompt_ids, answer_ids = split_prompt_answer(tokenizer, row["prompt"], row[side])
        prompt_ids = bos_once(prompt_ids, bos)
        if eos is not None and (not answer_ids or answer_ids[-1] != eos):
            answer_ids = answer_ids + [eos]
        sides[side] = [prompt_ids, answer_ids]

    longer_response = max(len(sides[s][1]) for s in sides)
    for side in sides.values():
        prompt_ids = side[0]
        if len(prompt_ids) + longer_response > max_length:
            side[0] = truncate_prompt(prompt_ids, max_prompt_length, truncation_mode, bos)
            if len(side[0]) < len(prompt_ids):
                cuts["prompt"] = [len(prompt_ids), len(side[0])]
    for name, side in sides.items():
        if len(side[0]) + longer_response > max_length:
            kept = side[1][: max_length - max_prompt_length]
            if len(kept) < len(side[1]):
                cuts[name] = [len(side[1]), len(kept)]
            side[1] = kept

    out = {"prompt_length": len(sides["chosen"][0])}
    for name, (prompt_ids, answer_ids) in sides.items():
        out[f"{name}_input_ids"] = prompt_ids + answer_ids
        out[f"{name}_labels"] = [label_pad_token_id] * len(prompt_ids) + answer_ids
    return out


def truncate_prompt(prompt_ids: list[int], max_prompt_length: int, truncation_mode: str, bos: int | None) -> list[int]:
    if truncation_mode == "keep_start":
        return prompt_ids[:max_prompt_length]
    if truncation_mode != "keep_end":
        raise ConfigError(f"Unknown truncation_mode {truncation_mode!r}: use 'keep_end' or 'keep_start'.")
    # Keep BOS first: the reference cut it off with the prompt's start (docs/differences.md).
    if bos is not None and prompt_ids and prompt_ids[0] == bos:
        return [bos] + prompt_ids[1:][-(max_prompt_length - 1) :] if max_prompt_length > 1 else [bos]
    return prompt_ids[-max_prompt_length:]


def empty_reply(tokenizer) -> str:
    """The template's text for an empty reply after a prompt ("" without a template: rows given as strings)."""
    if not tokenizer.chat_template:
        return ""
    turns = [{"role": "user", "content": CONTENT_PROBE}]
    _, replies, _, _ = render_replies(turns, [{"role": "assistant", "content": ""}], tokenizer)
    return replies[0] if replies else ""


def tokenize_pairs(dataset, tokenizer, args, name: str):
    """Token ids and labels of every pair (prompt, chosen, rejected strings) of a dataset, the pairs left out and the
    pairs truncation cut: (dataset, [DroppedRow], [CutRow]).

    A pair that teaches nothing (validation.degenerate_reason) or that its rendering flagged (RENDER_PROBLEM) is
    dropped, or raises per args.on_degenerate_pairs; its record names the row's origin from the mixer, or `name`
    (train_dataset, eval_dataset) and its index. Cuts are logged (validation.report_cuts), counted per split.
    """
    empty = empty_reply(tokenizer)

    def tokenize(row: dict, index: int) -> dict:
        cuts = {}
        tokens = tokenize_row(
            row, tokenizer, args.max_length, args.max_prompt_length, args.truncation_mode, args.label_pad_token_id, cuts
        )
        reason = row.get(RENDER_PROBLEM) or degenerate_reason(row, tokens, empty, args.label_pad_token_id)
        origin = row.get(ORIGIN) or row_origin(name, name, index)
        return {**tokens, "drop_reason": reason or "", "cuts": json.dumps(cuts) if cuts else "", ORIGIN: origin}

    settings = (tokenizer, args.max_length, args.max_prompt_length, args.truncation_mode, args.label_pad_token_id, name)
    dataset = dataset.map(
        tokenize,
        with_indices=True,
        num_proc=args.dataset_num_proc,
        remove_columns=dataset.column_names,
        new_fingerprint=map_fingerprint(dataset, *settings),
        desc=f"Tokenizing {name}",
    )
    reasons, origins = dataset["drop_reason"], dataset[ORIGIN]
    drops = [DroppedRow(**origin, reason=reason) for origin, reason in zip(origins, reasons) if reason]
    handle_drops(drops, args.on_degenerate_pairs, total=len(reasons))
    cut = [
        CutRow(**origin, **json.loads(cuts))
        for origin, cuts, reason in zip(origins, dataset["cuts"], reasons)
        if cuts and not reason
    ]
    report_cuts(cut, len(reasons) - len(drops), name, args.max_length, args.max_prompt_length)
    if drops:
        dataset = dataset.select([i for i, reason in enumerate(reasons) if not reason])
    return dataset.remove_columns(["drop_reason", "cuts", ORIGIN]), drops, cut
