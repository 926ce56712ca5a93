"""Message lists -> prompt / chosen / rejected strings with the model's chat template (reference semantics)."""

import re

from simpo.data.mixer import map_fingerprint
from simpo.errors import TemplateError

# Mistral's own template rejects system messages, so (like the reference) we fold the system message into the first
# user turn. As in the reference, each turn's text is stripped (the system text folded in first), so whitespace
# around a reply is not scored. No BOS in the text: tokenisation adds it once.
MISTRAL_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'].strip() + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set content = ((system if loop.first else '') + message['content']).strip() %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + content + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def set_chat_template(tokenizer, chat_template: str | None, model_name_or_path: str | None) -> None:
    """The YAML's chat_template wins; Mistral models get the system-folding template; else the tokenizer's own."""
    if chat_template:
        tokenizer.chat_template = chat_template
    elif model_name_or_path and "mistral" in model_name_or_path.lower():
        tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    if not tokenizer.chat_template:
        raise TemplateError(
            "The tokenizer has no chat template: set `chat_template` in the YAML (a Jinja string) or use a tokenizer"
            " that ships one."
        )


def maybe_insert_system_message(messages: list[dict], tokenizer) -> list[dict]:
    """Prepend an empty system turn when the template knows system turns and the prompt has none."""
    if messages and messages[0]["role"] == "system":
        return messages
    template = tokenizer.chat_template or ""
    if "system" in template or "<|im_start|>" in template:
        return [{"role": "system", "content": ""}] + messages
    return messages


def strip_bos(text: str, tokenizer) -> str:
    bos = tokenizer.bos_token
    return text[len(bos) :] if bos and text.startswith(bos) else text


def render_prompt(prompt_turns: list[dict], tokenizer, auto_insert_empty_system_msg: bool = True) -> str:
    """The prompt as training renders it: the turns (with the empty system turn rule), no generation prompt."""
    if auto_insert_empty_system_msg:
        prompt_turns = maybe_insert_system_message(prompt_turns, tokenizer)
    return tokenizer.apply_chat_template(prompt_turns, tokenize=False)


def render_response(turns: list[dict], tokenizer) -> str:
    """A response as training renders it: its last assistant turn alone, the template's BOS string removed."""
    return strip_bos(tokenizer.apply_chat_template(turns, tokenize=False), tokenizer)


def check_response_rendering(tokenizer, auto_insert_empty_system_msg: bool = True) -> None:
    """Responses are rendered alone (as the reference does), so the template must render a reply alone exactly as it
    renders it after its prompt. One that adds text to a lone reply (a default system block, as Llama-3.1's and
    Qwen2.5's templates write into a conversation without a system turn) would have that text scored as part of
    every response: refused."""
    prompt, reply = [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello"}]
    turns = maybe_insert_system_message(prompt, tokenizer) if auto_insert_empty_system_msg else prompt
    whole = tokenizer.apply_chat_template(turns + reply, tokenize=False)
    parts = render_prompt(prompt, tokenizer, auto_insert_empty_system_msg) + render_response(reply, tokenizer)
    if whole != parts:
        raise TemplateError(
            "The chat template renders a reply differently alone than after its prompt, so the text it adds would be"
            f" scored as part of every response: the conversation renders as {whole[-160:]!r}, the prompt and the"
            f" reply alone as {parts[-160:]!r}. Set chat_template to a template without a default system block"
            " (or give every conversation a system turn and keep auto_insert_empty_system_msg on)."
        )


# Column render_pairs adds: why a row's own text holds one of the tokenizer's special tokens ("" when it does not).
# Such text is tokenised as the control token itself (an end of turn, a header) and trained on silently, so the
# row is dropped at tokenisation (simpo/data/tokenization.py) unless allow_special_tokens_in_text is on.
SPECIAL_TEXT = "special_token_in_text"


def special_tokens(tokenizer) -> re.Pattern | None:
    """A pattern matching any special token's text: BOS/EOS/PAD and the like, and added tokens marked special
    (Llama-3's headers and its 250 reserved tokens: one regex search per message, not one per token)."""
    added = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    tokens = sorted((t for t in set(tokenizer.all_special_tokens) | added if t), key=lambda t: (-len(t), t))
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def special_token_in_text(
    row: dict, tokens: re.Pattern | None, columns: tuple = ("prompt", "chosen", "rejected")
) -> str:
    """Why the messages of a row (its message-list `columns`) hold a special token in their text, or ""."""
    for column in columns if tokens is not None else ():
        messages = row.get(column)
        for message in messages if isinstance(messages, list) else []:
            found = tokens.search(message["content"])
            token = found and found.group()
            if token:
                return (
                    f"special token {token!r} in the text of '{column}' (set allow_special_tokens_in_text: true"
                    " to train on it as that control token)"
                )
    return ""


def apply_chat_template(
    row: dict, tokenizer, auto_insert_empty_system_msg: bool = True, specials: re.Pattern | None = None
) -> dict:
    """A row of message lists -> {prompt, chosen, rejected} strings.

    An explicit message-list prompt is used as the prompt turns; otherwise the prompt is every turn of `chosen` but
    the last. The responses are the last assistant turns, rendered alone (their header is part of the response).
    """
    if isinstance(row.get("prompt"), list):
        prompt_turns, chosen_turns, rejected_turns = row["prompt"], row["chosen"], row["rejected"]
    else:
        prompt_turns, chosen_turns, rejected_turns = row["chosen"][:-1], row["chosen"][-1:], row["rejected"][-1:]
    rendered = {
        "prompt": render_prompt(prompt_turns, tokenizer, auto_insert_empty_system_msg),
        "chosen": render_response(chosen_turns, tokenizer),
        "rejected": render_response(rejected_turns, tokenizer),
    }
    if specials is not None:
        rendered[SPECIAL_TEXT] = special_token_in_text(row, specials)
    return rendered


def render_pairs(
    datasets: dict,
    tokenizer,
    auto_insert_empty_system_msg: bool = True,
    num_proc: int | None = None,
    allow_special_tokens_in_text: bool = False,
):
    """apply_chat_template over every split of {split: dataset}; each row keeps its other columns (its origin) and,
    unless allow_special_tokens_in_text, gains SPECIAL_TEXT (why its text holds a special token, or "")."""
    check_response_rendering(tokenizer, auto_insert_empty_system_msg)
    specials = None if allow_special_tokens_in_text else special_tokens(tokenizer)
    template = {
        "tokenizer": tokenizer,
        "auto_insert_empty_system_msg": auto_insert_empty_system_msg,
        "specials": specials,
    }
    return {
        side: dataset.map(
            apply_chat_template,
            fn_kwargs=template,
            num_proc=num_proc,
            new_fingerprint=map_fingerprint(dataset, template),
            desc="Applying chat template",
        )
        for side, dataset in datasets.items()
    }
