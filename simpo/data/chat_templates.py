"""Message lists -> prompt / chosen / rejected strings with the model's chat template.

Each reply is rendered inside its whole conversation and is the text the template writes after the prompt, checked
row by row (the prompt, with and without the generation prompt, must start the conversation). For the templates the
reference used (Llama-3, Mistral, Gemma-2, Zephyr) that is exactly the reference's text: the prompt without a
generation prompt, the reply's header belonging to the reply."""

import logging
import re

import jinja2

from simpo.data.mixer import ORIGIN, map_fingerprint
from simpo.data.validation import describe_row, row_origin
from simpo.errors import TemplateError

logger = logging.getLogger(__name__)

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


SIMPO_MISTRAL = "simpo's Mistral template (the model path contains 'mistral')"


def set_chat_template(tokenizer, chat_template: str | None, model_name_or_path: str | None) -> str:
    """The YAML's chat_template wins; Mistral models get the system-folding template; else the tokenizer's own.
    Returns which template it is, for messages (a template with a syntax error is refused here, naming it)."""
    if chat_template:
        tokenizer.chat_template, source = chat_template, "the YAML's chat_template"
    elif model_name_or_path and "mistral" in model_name_or_path.lower():
        tokenizer.chat_template, source = MISTRAL_CHAT_TEMPLATE, SIMPO_MISTRAL
    else:
        source = f"the tokenizer's own chat template ({tokenizer.name_or_path})"
    if not tokenizer.chat_template:
        raise TemplateError(
            "The tokenizer has no chat template: set `chat_template` in the YAML (a Jinja string) or use a tokenizer"
            " that ships one."
        )
    try:
        render([{"role": "user", "content": "Hi"}], tokenizer)
    except TemplateError as err:
        if isinstance(err.__cause__, jinja2.TemplateSyntaxError):
            fix = "Fix it" if chat_template else "Set chat_template in the YAML to a working template"
            raise TemplateError(f"{source} {failure(err)}. {fix}.") from err
    return source


def render(turns: list[dict], tokenizer, generation_prompt: bool = False) -> str:
    """The chat template's text for `turns`. A template that fails (its raise_exception, a syntax error, an undefined
    name, a wrong type) raises TemplateError with the template's own message (its line for a syntax error)."""
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as err:  # the template is the user's code: any failure of it is theirs to fix
        line = f" (template line {err.lineno})" if isinstance(err, jinja2.TemplateSyntaxError) else ""
        kind = "raises" if type(err) is jinja2.TemplateError else f"fails with {type(err).__name__}"
        raise TemplateError(f"{TEMPLATE} {kind}: {err}{line}") from err


TEMPLATE = "the chat template"


def failure(error: TemplateError) -> str:
    """What render said the template did ("raises: ...", "fails with ..."), to follow the template's name."""
    return str(error).removeprefix(TEMPLATE + " ")


# Templates whose text names system turns; for each, whether it renders one (Gemma-2's names "system" only to refuse
# it with raise_exception). Cached by template text: it is asked once per row.
SYSTEM_TURN_RENDERS: dict[str, bool] = {}


def takes_system_turn(tokenizer) -> bool:
    """Whether the template knows system turns: its text names them (the reference's rule: "system" or ChatML's
    <|im_start|>) and it renders one rather than raising on it."""
    template = tokenizer.chat_template or ""
    if "system" not in template and "<|im_start|>" not in template:
        return False
    if template not in SYSTEM_TURN_RENDERS:
        user = {"role": "user", "content": "Hi"}
        try:
            render([{"role": "system", "content": ""}, user], tokenizer)
            SYSTEM_TURN_RENDERS[template] = True
        except TemplateError:
            SYSTEM_TURN_RENDERS[template] = False
            try:  # said only when the template works otherwise (a broken one is reported on the first row)
                render([user], tokenizer)
                logger.info("The chat template refuses a system turn: no empty system turn is inserted into prompts.")
            except TemplateError:
                pass
    return SYSTEM_TURN_RENDERS[template]


def maybe_insert_system_message(messages: list[dict], tokenizer) -> list[dict]:
    """Prepend an empty system turn when the template knows system turns and the prompt has none."""
    if messages and messages[0]["role"] == "system":
        return messages
    if takes_system_turn(tokenizer):
        return [{"role": "system", "content": ""}] + messages
    return messages


def strip_bos(text: str, tokenizer) -> str:
    bos = tokenizer.bos_token
    return text[len(bos) :] if bos and text.startswith(bos) else text


def render_prompt(prompt_turns: list[dict], tokenizer, auto_insert_empty_system_msg: bool = True) -> str:
    """The prompt as training renders it: the turns (with the empty system turn rule), no generation prompt."""
    if auto_insert_empty_system_msg:
        prompt_turns = maybe_insert_system_message(prompt_turns, tokenizer)
    return render(prompt_turns, tokenizer)


def pair_turns(row: dict) -> tuple[list[dict], dict, dict]:
    """(prompt turns, chosen reply, rejected reply) of a row: the replies are the last turns of `chosen` and
    `rejected`; the prompt is every turn before them (after the `prompt` messages when it is a message list)."""
    prompt = row.get("prompt")
    history = (prompt if isinstance(prompt, list) else []) + row["chosen"][:-1]
    return history, row["chosen"][-1], row["rejected"][-1]


# Why a reply cannot be told from its prompt (validation drops such rows; render_pairs logs an example in full).
PROMPT_NOT_PREFIX = (
    "the chat template renders the prompt differently from the start of the whole conversation, so the reply cannot"
    " be told from it"
)
GENERATION_NOT_PREFIX = (
    "the chat template's generation prompt is not how it renders the conversation after the prompt (the model would"
    " be prompted with other tokens than it is trained to continue)"
)
WITHOUT_INSERTED_SYSTEM = "; without the empty system turn simpo inserts it is: set auto_insert_empty_system_msg: false"


def first_difference(head: str, whole: str) -> str:
    """Where `head` stops being the start of `whole`, shown from both."""
    at = next((i for i, (a, b) in enumerate(zip(head, whole)) if a != b), min(len(head), len(whole)))
    return (
        f"at character {at} the prompt has {head[at - 40 : at + 40]!r}, the conversation {whole[at - 40 : at + 40]!r}"
    )


def render_replies(
    prompt_turns: list[dict], replies: list[dict], tokenizer, auto_insert_empty_system_msg: bool = True
) -> tuple[str, list[str], str, str]:
    """(prompt text, each reply's text, problem, detail): each reply is what the template renders after the prompt
    in the whole conversation (prompt turns + reply), so the template's own rules for a last turn (Qwen3's reasoning
    block) and for the conversation (a default system block, which stays in the prompt) hold. The prompt rendered
    without and with the generation prompt must both start the whole conversation; when not, problem names why
    (PROMPT_NOT_PREFIX, GENERATION_NOT_PREFIX), detail shows where, and the texts are empty."""
    turns = maybe_insert_system_message(prompt_turns, tokenizer) if auto_insert_empty_system_msg else prompt_turns
    prompt = render(turns, tokenizer)
    generation = render(turns, tokenizer, generation_prompt=True)
    texts = []
    for reply in replies:
        whole = render(turns + [reply], tokenizer)
        for head, problem in ((prompt, PROMPT_NOT_PREFIX), (generation, GENERATION_NOT_PREFIX)):
            if not whole.startswith(head):
                if turns is not prompt_turns and not render_replies(prompt_turns, replies, tokenizer, False)[2]:
                    problem += WITHOUT_INSERTED_SYSTEM
                return "", [], problem, first_difference(head, whole)
        texts.append(whole[len(prompt) :])
    return prompt, texts, "", ""


def apply_chat_template(row: dict, tokenizer, auto_insert_empty_system_msg: bool = True) -> dict:
    """A row of message lists -> {prompt, chosen, rejected} strings: the prompt rendered without a generation
    prompt, each reply as the template renders it after the prompt (its header is part of the response). Raises
    TemplateError when the template's rendering of the prompt does not start the conversation."""
    prompt_turns, chosen, rejected = pair_turns(row)
    prompt, replies, problem, detail = render_replies(
        prompt_turns, [chosen, rejected], tokenizer, auto_insert_empty_system_msg
    )
    if problem:
        raise TemplateError(f"{problem}: {detail}.")
    return {"prompt": prompt, "chosen": replies[0], "rejected": replies[1]}


def render_failure(origin: dict, error: TemplateError, template: str, inserted: bool) -> TemplateError:
    """A template that fails on a row, as its user can act on it: the row, the template, what it said, the fix."""
    fix = (
        "Set chat_template in the YAML to a template that renders such conversations (e.g. one that folds a"
        " system turn into the first user turn, as training_configs/gemma-2-9b-it-simpo.yaml does for Gemma's"
        " template, which refuses system turns), or fix the row"
    )
    if inserted:
        fix += "; simpo put an empty system turn first: auto_insert_empty_system_msg: false leaves it out"
    return TemplateError(f"{describe_row(origin)}: {template} {failure(error)}. {fix}.")


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


# Column render_pairs adds: why a row cannot be trained on as rendered ("" when it can), so that tokenisation
# (simpo/data/tokenization.py) drops it, counted: the template does not render its prompt as the start of its
# conversation, or its own text holds one of the tokenizer's special tokens (tokenised as the control token itself,
# an end of turn, a header, and trained on silently) unless allow_special_tokens_in_text is on.
RENDER_PROBLEM = "render_problem"


def render_row(
    row: dict, index: int, tokenizer, auto_insert_empty_system_msg: bool, specials: re.Pattern | None, template: str
) -> dict:
    """render_pairs' work on one row: its strings and RENDER_PROBLEM; a template that fails on it raises, naming
    the row (its origin) and the template."""
    prompt_turns, chosen, rejected = pair_turns(row)
    try:
        prompt, replies, problem, _ = render_replies(
            prompt_turns, [chosen, rejected], tokenizer, auto_insert_empty_system_msg
        )
    except TemplateError as err:
        inserted = auto_insert_empty_system_msg and maybe_insert_system_message(prompt_turns, tokenizer) != prompt_turns
        raise render_failure(row.get(ORIGIN) or row_origin("rows", "rows", index), err, template, inserted) from err
    problem = problem or (special_token_in_text(row, specials) if specials is not None else "")
    chosen_text, rejected_text = replies or ("", "")  # none when the template does not render the row as prompt + reply
    return {"prompt": prompt, "chosen": chosen_text, "rejected": rejected_text, RENDER_PROBLEM: problem}


def render_pairs(
    datasets: dict,
    tokenizer,
    auto_insert_empty_system_msg: bool = True,
    num_proc: int | None = None,
    allow_special_tokens_in_text: bool = False,
    template: str = TEMPLATE,
):
    """render_row over every split of {split: dataset}; each row keeps its other columns (its origin) and gains
    RENDER_PROBLEM (why it cannot be trained on as rendered, or ""), which tokenisation turns into a counted drop.
    `template` names the template in errors (set_chat_template's answer)."""
    specials = None if allow_special_tokens_in_text else special_tokens(tokenizer)
    settings = {
        "tokenizer": tokenizer,
        "auto_insert_empty_system_msg": auto_insert_empty_system_msg,
        "specials": specials,
        "template": template,
    }
    rendered = {
        side: dataset.map(
            render_row,
            fn_kwargs=settings,
            with_indices=True,
            num_proc=num_proc,
            new_fingerprint=map_fingerprint(dataset, settings),
            desc="Applying chat template",
        )
        for side, dataset in datasets.items()
    }
    for side, dataset in rendered.items():
        explain_template_drops(datasets[side], dataset[RENDER_PROBLEM], tokenizer, auto_insert_empty_system_msg, side)
    return rendered


def explain_template_drops(rows, problems: list[str], tokenizer, auto_insert_empty_system_msg: bool, side: str) -> None:
    """One warning per split whose rows the template does not render as prompt + reply, with the first one shown
    in full (the drop records carry the reason alone)."""
    failing = [
        i for i, problem in enumerate(problems) if problem.startswith((PROMPT_NOT_PREFIX, GENERATION_NOT_PREFIX))
    ]
    if not failing:
        return
    row = rows[failing[0]]
    prompt_turns, chosen, rejected = pair_turns(row)
    _, _, problem, detail = render_replies(prompt_turns, [chosen, rejected], tokenizer, auto_insert_empty_system_msg)
    where = describe_row(row.get(ORIGIN) or row_origin("rows", "rows", failing[0]))
    logger.warning(
        "%d %s rows are not rendered as prompt + reply by the chat template and will be dropped: %s. E.g. %s: %s.",
        len(failing),
        side,
        problem,
        where,
        detail,
    )
