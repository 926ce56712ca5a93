"""Token ids and labels of one preference row (prompt, chosen, rejected strings), as the reference builds them."""


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


def tokenize_row(
    row: dict,
    tokenizer,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: str = "keep_end",
    label_pad_token_id: int = -100,
) -> dict:
    """prompt/chosen/rejected strings -> {chosen,rejected}_{input_ids,labels} and prompt_length.

    BOS is put first once (when the tokenizer has one), EOS last once on each response. If prompt plus the longer
    response exceed max_length the prompt is cut to max_prompt_length (keep_end keeps its last tokens, after BOS);
    if still too long each response is cut to max_length - max_prompt_length.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    sides = {}
    for side in ("chosen", "rejected"):
        prompt_ids, answer_ids = split_prompt_answer(tokenizer, row["prompt"], row[side])
        if bos is not None and (not prompt_ids or prompt_ids[0] != bos):
            prompt_ids = [bos] + prompt_ids
        if eos is not None and (not answer_ids or answer_ids[-1] != eos):
            answer_ids = answer_ids + [eos]
        sides[side] = [prompt_ids, answer_ids]

    longer_response = max(len(sides[s][1]) for s in sides)
    for side in sides.values():
        prompt_ids = side[0]
        if len(prompt_ids) + longer_response > max_length:
            side[0] = truncate_prompt(prompt_ids, max_prompt_length, truncation_mode, bos)
    for side in sides.values():
        if len(side[0]) + longer_response > max_length:
            side[1] = side[1][: max_length - max_prompt_length]

    out = {"prompt_length": len(sides["chosen"][0])}
    for name, (prompt_ids, answer_ids) in sides.items():
        out[f"{name}_input_ids"] = prompt_ids + answer_ids
        out[f"{name}_labels"] = [label_pad_token_id] * len(prompt_ids) + answer_ids
    return out


def truncate_prompt(prompt_ids: list[int], max_prompt_length: int, truncation_mode: str, bos: int | None) -> list[int]:
    if truncation_mode == "keep_start":
        return prompt_ids[:max_prompt_length]
    if truncation_mode != "keep_end":
        raise ValueError(f"Unknown truncation_mode {truncation_mode!r}: use 'keep_end' or 'keep_start'.")
    # Keep BOS first: the reference cut it off with the prompt's start (see README, differences).
    if bos is not None and prompt_ids and prompt_ids[0] == bos:
        return [bos] + prompt_ids[1:][-(max_prompt_length - 1) :] if max_prompt_length > 1 else [bos]
    return prompt_ids[-max_prompt_length:]
