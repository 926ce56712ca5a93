"""Evaluation templates feed the model exactly the tokens training did: AlpacaEval's prompt text (as vLLM encodes
it) and the vLLM chat template (Arena-Hard's server), for the Llama-3, Mistral-instruct, Mistral-base (Zephyr) and
Gemma-2 templates of the training configs; broken templates are refused naming the first differing token."""

import os

import pytest
import yaml
from conftest import REPO, TINY_MODEL
from tokenizers import processors
from transformers import AutoTokenizer

from simpo.data.chat_templates import set_chat_template
from simpo.errors import ParityError
from simpo.evaluation.families import family_of
from simpo.evaluation.templates import (
    ALPACA_EVAL_CONVERSATIONS,
    PARITY_CONVERSATIONS,
    alpaca_eval_ids,
    alpaca_eval_template,
    check_parity,
    vllm_chat_ids,
    vllm_chat_template,
)

# alignment-handbook/zephyr-7b-sft-full's template (the Mistral-base config trains with the model's own template).
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}"
    "\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


def with_bos_added(tok):
    """As the real Mistral and Gemma tokenizers: encoding with special tokens puts BOS first."""
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)]
    )
    return tok


def llama3(make_tokenizer):
    return AutoTokenizer.from_pretrained(TINY_MODEL)  # Meta's Llama-3 template; adds BOS


def mistral_instruct(make_tokenizer):
    tok = with_bos_added(make_tokenizer(["<s>", "</s>"], merges=[(" ", "H")], bos="<s>", eos="</s>"))
    set_chat_template(tok, None, "mistralai/Mistral-7B-Instruct-v0.2")
    return tok


def mistral_base(make_tokenizer):
    return with_bos_added(make_tokenizer(["<s>", "</s>"], bos="<s>", eos="</s>", template=ZEPHYR))


def gemma2(make_tokenizer):
    with open(os.path.join(REPO, "training_configs", "gemma-2-9b-it-simpo.yaml")) as f:
        template = yaml.safe_load(f)["chat_template"]
    return with_bos_added(
        make_tokenizer(
            ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>", template=template
        )
    )


FAMILIES = {"llama3": llama3, "mistral-instruct": mistral_instruct, "mistral-base": mistral_base, "gemma2": gemma2}


@pytest.mark.parametrize("family", FAMILIES)
def test_alpaca_eval_template_has_token_parity(family, make_tokenizer):
    tok = FAMILIES[family](make_tokenizer)
    assert family_of(tok.chat_template) == family
    template = alpaca_eval_template(tok, auto_insert=True)
    assert template.count("{instruction}") == 1 and not template.startswith(tok.bos_token)
    tool = lambda turns: alpaca_eval_ids(template, turns, tok)
    compared = check_parity("alpaca_eval", tool, ALPACA_EVAL_CONVERSATIONS, tok, True)
    assert compared > 10 * len(ALPACA_EVAL_CONVERSATIONS)


def test_a_text_slot_cannot_trim_what_the_llama3_template_trims(make_tokenizer):
    # Why AlpacaEval's text template is checked on instructions without surrounding whitespace (simpo-answer, which
    # renders with the template itself, has no such limit).
    tok = llama3(make_tokenizer)
    template = alpaca_eval_template(tok, True)
    padded = [[{"role": "user", "content": "  Hi there "}]]
    with pytest.raises(ParityError, match="position 6 .* training fed token \\d+ 'H', alpaca_eval gives token"):
        check_parity("alpaca_eval", lambda turns: alpaca_eval_ids(template, turns, tok), padded, tok, True)


@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_chat_template_has_token_parity_also_with_system_and_multi_turn(family, make_tokenizer):
    tok = FAMILIES[family](make_tokenizer)
    template = vllm_chat_template(tok, auto_insert=True)
    check_parity("vllm chat", lambda turns: vllm_chat_ids(template, turns, tok), PARITY_CONVERSATIONS, tok, True)


def test_the_generated_templates_spelled_out_for_llama3_and_zephyr(make_tokenizer):
    assert alpaca_eval_template(llama3(make_tokenizer), True) == (
        "<|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # Zephyr's template knows system turns, so training inserted an empty one: evaluation must too.
    assert alpaca_eval_template(mistral_base(make_tokenizer), True) == (
        "<|system|>\n</s>\n<|user|>\n{instruction}</s>\n<|assistant|>\n"
    )
    # The Mistral space after [/INST] merges into the reply's first word in training: the model writes it.
    assert alpaca_eval_template(mistral_instruct(make_tokenizer), True) == "[INST] {instruction} [/INST]"


def test_a_template_with_a_doubled_bos_is_refused_naming_the_token(make_tokenizer):
    tok = llama3(make_tokenizer)
    broken = "<|begin_of_text|>" + alpaca_eval_template(tok, True)  # BOS in the text and from the tokenizer
    with pytest.raises(ParityError) as error:
        tool = lambda turns: alpaca_eval_ids(broken, turns, tok)
        check_parity("alpaca_eval", tool, ALPACA_EVAL_CONVERSATIONS, tok, True)
    message = str(error.value)
    assert "differs from training at position 1 of check prompt 0" in message
    assert "training fed token 2 '<|start_header_id|>', alpaca_eval gives token 0 '<|begin_of_text|>'" in message


def test_a_chat_template_without_the_training_system_turn_is_refused(make_tokenizer):
    tok = mistral_base(make_tokenizer)
    own = "{{ bos_token }}" + ZEPHYR  # Zephyr's own template with BOS, as a server would use it: no empty system turn
    with pytest.raises(
        ParityError,
        match=r"position 3 of check prompt 0 .*training fed token \d+ 's', vllm chat "
        r"gives token \d+ 'u'",
    ):
        check_parity("vllm chat", lambda turns: vllm_chat_ids(own, turns, tok), PARITY_CONVERSATIONS, tok, True)
