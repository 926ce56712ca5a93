"""Evaluation prompt templates derived from the training template, and the token-parity check that refuses a
template unless it feeds the model exactly the tokens training did.

Two templates, each as its tool turns it into token ids:
- AlpacaEval's prompt template (text with an `{instruction}` slot): alpaca_eval's vllm_local_completions puts the
  instruction in and vLLM encodes the text with the tokenizer's special tokens (so BOS is added by the tokenizer
  when it adds one, and must then not be in the text). A text slot cannot do what a template does to the content:
  templates that trim messages (Llama-3, Mistral, Gemma-2) trim the instruction in training, the slot passes it as
  is, so parity holds for instructions without surrounding whitespace (ALPACA_EVAL_CONVERSATIONS); simpo-answer
  renders with the template itself and has no such limit.
- A chat template for `vllm serve --chat-template` (Arena-Hard's gen_answer.py talks to such a server): vLLM renders
  the messages with a generation prompt and encodes without special tokens. It is the training template with the
  training's empty-system-turn rule in front and the response header (the part of a reply before its content) as
  the generation prompt.

The expected ids are simpo.data.tokenization.generation_prompt_ids: what training fed the model for the same
conversation up to where the reply starts (BOS once, same headers, same system-turn rule).
"""

import json

from simpo.data.chat_templates import maybe_insert_system_message, render_prompt, strip_bos
from simpo.data.tokenization import bos_once, generation_prompt_ids, response_header
from simpo.errors import ParityError

INSTRUCTION = "{instruction}"  # AlpacaEval's slot
USER = lambda text: {"role": "user", "content": text}
# Prompts the templates are checked on: plain, multi-line, code with braces, leading/trailing spaces, non-ASCII.
PARITY_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn.\nUse exactly three lines.",
    "Fix this code: def f(x): return {x: [1, 2]}",
    "  Explain recursion to a five-year-old.  ",
    "Translate 'good morning' into Japanese, Spanish and German: おはよう?",
]
PARITY_CONVERSATIONS = [[USER(p)] for p in PARITY_PROMPTS] + [
    [{"role": "system", "content": "You are a concise assistant."}, USER("Name three primes.")],
    [USER("Name a colour."), {"role": "assistant", "content": "Blue."}, USER("And another one?")],
]
ALPACA_EVAL_CONVERSATIONS = [[USER(p.strip())] for p in PARITY_PROMPTS]


def adds_bos(tokenizer) -> bool:
    """Whether encoding text with special tokens puts BOS first (Llama-3, Mistral, Gemma tokenizers do)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def generation_header(tokenizer, auto_insert: bool) -> str:
    """The generation prompt: the response header as training tokenises it before a reply's content."""
    turns = [USER("Hi")]
    rendered, header = render_prompt(turns, tokenizer, auto_insert), response_header(tokenizer)
    expected = generation_prompt_ids(turns, tokenizer, auto_insert)
    for candidate in (header, header.rstrip()):
        if (
            bos_once(tokenizer(rendered + candidate, add_special_tokens=False)["input_ids"], tokenizer.bos_token_id)
            == expected
        ):
            return candidate
    return header  # the parity check will show where it differs


def alpaca_eval_template(tokenizer, auto_insert: bool) -> str:
    """AlpacaEval prompt template: the training text of one user turn `{instruction}` and the generation prompt,
    without the BOS string when the tokenizer adds BOS itself (vLLM encodes with special tokens), with it otherwise."""
    text = render_prompt([USER(INSTRUCTION)], tokenizer, auto_insert) + generation_header(tokenizer, auto_insert)
    if adds_bos(tokenizer):
        return strip_bos(text, tokenizer)
    bos = tokenizer.bos_token
    return text if not bos or text.startswith(bos) else bos + text


def vllm_chat_template(tokenizer, auto_insert: bool) -> str:
    """A chat template for `vllm serve --chat-template`: the training template rendered without its own generation
    prompt, the empty system turn inserted when training inserts one, then the generation prompt."""
    inserts = auto_insert and maybe_insert_system_message([USER("x")], tokenizer)[0]["role"] == "system"
    prefix = "{% set simpo_generation_prompt = add_generation_prompt %}{% set add_generation_prompt = false %}"
    if tokenizer.bos_token and not render_prompt([USER("x")], tokenizer, auto_insert).startswith(tokenizer.bos_token):
        prefix += "{{ bos_token }}"  # training puts BOS first; vLLM's chat path adds no special token itself
    if inserts:
        prefix += (
            "{% if messages and messages[0]['role'] != 'system' %}"
            "{% set messages = [{'role': 'system', 'content': ''}] + messages %}{% endif %}"
        )
    header = json.dumps(generation_header(tokenizer, auto_insert), ensure_ascii=False)
    return prefix + tokenizer.chat_template + "{% if simpo_generation_prompt %}{{ " + header + " }}{% endif %}"


def alpaca_eval_ids(template: str, turns: list[dict], tokenizer) -> list[int]:
    """What alpaca_eval + vLLM feed the model: the instruction replaces the slot, the text is encoded with special
    tokens."""
    return tokenizer(template.replace(INSTRUCTION, turns[-1]["content"], 1))["input_ids"]


def vllm_chat_ids(template: str, turns: list[dict], tokenizer) -> list[int]:
    """What a vLLM chat server feeds the model: the template with a generation prompt, encoded without special
    tokens (the template writes them)."""
    text = tokenizer.apply_chat_template(turns, chat_template=template, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def describe(tokenizer, ids: list[int], at: int) -> str:
    if at >= len(ids):
        return "nothing (its prompt ends there)"
    return f"token {ids[at]} {tokenizer.convert_ids_to_tokens(ids[at])!r}"


def check_parity(name: str, tool_ids, conversations: list[list[dict]], tokenizer, auto_insert: bool) -> int:
    """Raise ParityError at the first conversation whose tool ids differ from training's; the tokens compared."""
    compared = 0
    for n, turns in enumerate(conversations):
        expected, got = generation_prompt_ids(turns, tokenizer, auto_insert), tool_ids(turns)
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
            raise ParityError(
                f"{name}: the evaluation prompt differs from training at position {at} of check prompt {n}"
                f" ({turns[-1]['content'][:40]!r}): training fed {describe(tokenizer, expected, at)}, {name} gives"
                f" {describe(tokenizer, got, at)}. Training's prompt starts"
                f" {tokenizer.convert_ids_to_tokens(expected[: at + 2])}; fix the template (a doubled BOS, a missing"
                " system turn or a different header all change what the model sees)."
            )
        compared += len(expected)
    return compared
