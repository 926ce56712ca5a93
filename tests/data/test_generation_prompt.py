"""The ids a model is prompted with for generation are the ids training feeds it for the same conversation, up to
where the assistant's content begins: Llama-3 (the tiny Llama's byte-level tokenizer and template), Mistral (simpo's
template) and Gemma-2 (the template of training_configs/gemma-2-9b-it-simpo.yaml)."""

import os

import pytest
import yaml
from conftest import REPO, TINY_MODEL
from transformers import AutoTokenizer

from simpo.data.chat_templates import apply_chat_template, set_chat_template
from simpo.data.tokenization import generation_prompt_ids, response_header, tokenize_row

SYSTEM = {"role": "system", "content": "Be brief."}
CONVERSATIONS = [  # (prompt turns, reply)
    ([{"role": "user", "content": "What is 2+2?"}], "Hello, it is 4."),
    ([SYSTEM, {"role": "user", "content": "Name a colour."}], "Blue."),
    (
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and 3+3?"},
        ],
        "6 of course",
    ),
]


def gemma_template() -> str:
    with open(os.path.join(REPO, "training_configs", "gemma-2-9b-it-simpo.yaml")) as f:
        return yaml.safe_load(f)["chat_template"]


def llama3():
    return AutoTokenizer.from_pretrained(TINY_MODEL)  # ships Meta's Llama-3 template


def mistral(make_tokenizer, merges=()):
    tok = make_tokenizer(["<s>", "</s>"], merges=merges, bos="<s>", eos="</s>")
    set_chat_template(tok, None, "mistralai/Mistral-7B-Instruct-v0.2")
    return tok


def gemma(make_tokenizer):
    return make_tokenizer(
        ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], bos="<bos>", eos="<eos>", template=gemma_template()
    )


def training_ids(prompt_turns, reply, tok) -> list[int]:
    """What training feeds the model for this conversation (the recipe's own row path)."""
    row = {
        "prompt": prompt_turns,
        "chosen": [{"role": "assistant", "content": reply}],
        "rejected": [{"role": "assistant", "content": "x"}],
    }
    return tokenize_row(apply_chat_template(row, tok), tok, max_length=1024, max_prompt_length=512)["chosen_input_ids"]


def text_ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def as_text(tok, ids) -> str:
    """Decoded text without special tokens (the char-level test tokenizers have no decoder: join their tokens)."""
    ids = [i for i in ids if i not in tok.all_special_ids]
    return tok.decode(ids) if tok.backend_tokenizer.decoder else "".join(tok.convert_ids_to_tokens(ids))


def assert_parity(tok, prompt_turns, reply):
    gen = generation_prompt_ids(prompt_turns, tok)
    train = training_ids(prompt_turns, reply, tok)
    assert gen == train[: len(gen)]
    assert gen.count(tok.bos_token_id) == 1 and gen[0] == tok.bos_token_id
    # What follows is the reply and the end of the turn, nothing of the prompt or header.
    assert as_text(tok, train[len(gen) :]).strip().startswith(reply)
    return gen


@pytest.mark.parametrize("prompt_turns, reply", CONVERSATIONS)
def test_llama3_generation_prompt_is_the_training_prefix(prompt_turns, reply):
    tok = llama3()
    gen = assert_parity(tok, prompt_turns, reply)
    # And it is Meta's own generation prompt (the template never names "system": no empty system turn is added).
    official = tok.apply_chat_template(prompt_turns, tokenize=False, add_generation_prompt=True)
    assert gen == text_ids(tok, official)
    assert official.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize("prompt_turns, reply", CONVERSATIONS)
def test_gemma2_generation_prompt_is_the_training_prefix(make_tokenizer, prompt_turns, reply):
    tok = gemma(make_tokenizer)
    gen = assert_parity(tok, prompt_turns, reply)
    if prompt_turns[0] is SYSTEM:
        expected = "<bos><start_of_turn>user\nBe brief.\n\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
        assert gen == text_ids(tok, expected)
    assert tok.convert_ids_to_tokens(gen)[-9:] == ["<end_of_turn>", "\n", "<start_of_turn>", *"model", "\n"]


@pytest.mark.parametrize("prompt_turns, reply", CONVERSATIONS)
def test_mistral_generation_prompt_is_the_training_prefix(make_tokenizer, prompt_turns, reply):
    tok = mistral(make_tokenizer)
    gen = assert_parity(tok, prompt_turns, reply)
    if prompt_turns[0] is SYSTEM:  # no BOS in the text, the system message folded into the first user turn
        assert gen == [tok.bos_token_id] + text_ids(tok, "[INST] Be brief.\n\nName a colour. [/INST] ")


def test_mistral_header_space_merged_into_the_reply_is_left_to_the_model(make_tokenizer):
    # SentencePiece-like: " H" is one token, so training sees "[/INST]", " H", "ello"... and never a lone " ".
    tok = mistral(make_tokenizer, merges=[(" ", "H")])
    gen = assert_parity(tok, CONVERSATIONS[0][0], "Hello, it is 4.")
    assert gen == [tok.bos_token_id] + text_ids(tok, "[INST] What is 2+2? [/INST]")


def test_response_headers_of_the_three_templates(make_tokenizer):
    assert response_header(llama3()) == "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert response_header(gemma(make_tokenizer)) == "<start_of_turn>model\n"
    assert response_header(mistral(make_tokenizer)) == " "


def test_a_template_that_rewrites_the_content_is_refused(make_tokenizer):
    tok = make_tokenizer(["</s>"], eos="</s>", template="{% for m in messages %}{{ m['content'] | upper }}{% endfor %}")
    with pytest.raises(ValueError, match="does not render an assistant turn's content verbatim"):
        generation_prompt_ids([{"role": "user", "content": "hi"}], tok)
