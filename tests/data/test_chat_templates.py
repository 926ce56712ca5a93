import pytest
from templates import GEMMA, LLAMA3

from simpo.data.chat_templates import MISTRAL_CHAT_TEMPLATE, apply_chat_template, set_chat_template

ZEPHYR = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# Gemma-2 style as a training config supplies it: BOS first, system folded into the first user turn.

ROW = {
    "prompt": "What is 2+2?",
    "chosen": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    "rejected": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"}],
}


def test_llama3_response_carries_the_header_and_loses_bos(make_tokenizer):
    tok = make_tokenizer(
        ["<|begin_of_text|>", "<|eot_id|>"], bos="<|begin_of_text|>", eos="<|eot_id|>", template=LLAMA3
    )
    out = apply_chat_template(ROW, tok)
    # Llama-3's template never names "system", so (as in the reference) no empty system turn is inserted.
    assert out["prompt"] == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    # BOS string stripped from the response; the assistant header is part of it (and so of the labels).
    assert out["chosen"] == "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>"
    assert out["rejected"] == "<|start_header_id|>assistant<|end_header_id|>\n\n5<|eot_id|>"


def test_empty_system_turn_inserted_when_the_template_knows_system_turns(make_tokenizer):
    template = "{# system prompts supported #}" + LLAMA3
    tok = make_tokenizer(
        ["<|begin_of_text|>", "<|eot_id|>"], bos="<|begin_of_text|>", eos="<|eot_id|>", template=template
    )
    assert apply_chat_template(ROW, tok)["prompt"] == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    )
    chatml = make_tokenizer(
        ["</s>"],
        eos="</s>",
        template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    )
    assert apply_chat_template(ROW, chatml)["prompt"].startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user")
    assert "system" not in apply_chat_template(ROW, tok, auto_insert_empty_system_msg=False)["prompt"]


def test_zephyr_template_without_system(make_tokenizer):
    zephyr = make_tokenizer(["</s>"], eos="</s>", template=ZEPHYR)
    assert apply_chat_template(ROW, zephyr)["prompt"] == "<|user|>\nWhat is 2+2?</s>\n"
    assert apply_chat_template(ROW, zephyr)["chosen"] == "<|assistant|>\n4</s>\n"


def test_explicit_message_list_prompt_is_used_as_given(make_tokenizer):
    tok = make_tokenizer(["</s>"], eos="</s>", template=ZEPHYR)
    row = {
        "prompt": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
        ],
        "chosen": [{"role": "assistant", "content": "ciao"}],
        "rejected": [{"role": "assistant", "content": "no"}],
    }
    out = apply_chat_template(row, tok, auto_insert_empty_system_msg=False)
    assert out["prompt"] == "<|user|>\nhi</s>\n<|assistant|>\nhello</s>\n<|user|>\nbye</s>\n"
    assert out["chosen"] == "<|assistant|>\nciao</s>\n"


def test_multi_turn_prompt_is_all_chosen_turns_but_the_last(make_tokenizer):
    tok = make_tokenizer(["</s>"], eos="</s>", template=ZEPHYR)
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    row = {
        "prompt": "a",
        "chosen": turns + [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "IGNORED"}, {"role": "assistant", "content": "bad"}],
    }
    out = apply_chat_template(row, tok)
    assert out["prompt"] == "<|user|>\na</s>\n<|assistant|>\nb</s>\n<|user|>\nc</s>\n"
    assert out["rejected"] == "<|assistant|>\nbad</s>\n"


def test_mistral_template_folds_system_into_first_user_turn(make_tokenizer):
    tok = make_tokenizer(["<s>", "</s>"], bos="<s>", eos="</s>", template="{{ unused }}")
    set_chat_template(tok, None, "mistralai/Mistral-7B-Instruct-v0.2")
    assert tok.chat_template == MISTRAL_CHAT_TEMPLATE
    row = dict(ROW, chosen=[{"role": "system", "content": " Be brief. "}] + ROW["chosen"])
    out = apply_chat_template(row, tok)
    assert out["prompt"] == "[INST] Be brief.\n\nWhat is 2+2? [/INST]"
    assert out["chosen"] == " 4 </s>"
    # An inserted empty system message leaves the user turn alone; no BOS in the text.
    assert apply_chat_template(ROW, tok)["prompt"] == "[INST] What is 2+2? [/INST]"


def test_mistral_template_strips_each_turn_as_the_reference(make_tokenizer):
    """The reference strips every turn's text (the first user turn after the system text is folded in), so
    whitespace around a reply is neither rendered nor scored."""
    tok = make_tokenizer(["<s>", "</s>"], bos="<s>", eos="</s>", template="{{ unused }}")
    set_chat_template(tok, None, "mistralai/Mistral-7B-Instruct-v0.2")
    row = {
        "chosen": [{"role": "user", "content": " Hi there\n"}, {"role": "assistant", "content": " Sure.\n\n"}],
        "rejected": [{"role": "user", "content": " Hi there\n"}, {"role": "assistant", "content": "\tNo "}],
    }
    assert apply_chat_template(row, tok) == {
        "prompt": "[INST] Hi there [/INST]",
        "chosen": " Sure. </s>",
        "rejected": " No </s>",
    }
    with_system = dict(row, chosen=[{"role": "system", "content": " Be brief. "}] + row["chosen"])
    # Stripped as one string: the user text's leading space stays behind the folded system text.
    assert apply_chat_template(with_system, tok)["prompt"] == "[INST] Be brief.\n\n Hi there [/INST]"
    later_turns = [
        {"role": "user", "content": "a "},
        {"role": "assistant", "content": " b "},
        {"role": "user", "content": " c"},
    ]
    assert tok.apply_chat_template(later_turns, tokenize=False) == "[INST] a [/INST] b </s>[INST] c [/INST]"


def test_gemma_template_from_yaml_wins(make_tokenizer):
    tok = make_tokenizer(["<bos>", "<eos>"], bos="<bos>", eos="<eos>", template=ZEPHYR)
    set_chat_template(tok, GEMMA, "google/gemma-2-9b-it")
    out = apply_chat_template(ROW, tok)
    assert out["prompt"] == "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
    assert out["chosen"] == "<start_of_turn>model\n4<end_of_turn>\n"
    row = dict(ROW, chosen=[{"role": "system", "content": "S"}] + ROW["chosen"])
    assert apply_chat_template(row, tok)["prompt"] == "<bos><start_of_turn>user\nS\n\nWhat is 2+2?<end_of_turn>\n"


def test_missing_template_is_a_clear_error(make_tokenizer):
    tok = make_tokenizer(["</s>"], eos="</s>")
    with pytest.raises(ValueError, match="no chat template: set `chat_template` in the YAML"):
        set_chat_template(tok, None, "some/model")


# Qwen2.5-style: a default system block when a conversation starts without a system turn.
DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


def test_a_default_system_block_stays_in_the_prompt_and_out_of_the_scored_reply(make_tokenizer):
    """A template that writes a default system block into a conversation without a system turn (Qwen2.5's,
    Llama-3.1's) also writes it into a reply rendered alone; rendered in its conversation, the reply is the reply."""
    from datasets import Dataset

    from simpo.data.chat_templates import render_pairs

    tok = make_tokenizer(["<|im_start|>", "<|im_end|>"], eos="<|im_end|>", template=DEFAULT_SYSTEM)
    assert tok.apply_chat_template(ROW["chosen"][-1:], tokenize=False).startswith("<|im_start|>system\nYou are")
    rendered = render_pairs({"train": Dataset.from_list([ROW])}, tok, auto_insert_empty_system_msg=False)["train"][0]
    assert rendered["prompt"] == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    )
    assert rendered["chosen"] == "<|im_start|>assistant\n4<|im_end|>\n" and rendered["render_problem"] == ""
    assert rendered["prompt"] + rendered["chosen"] == tok.apply_chat_template(ROW["chosen"], tokenize=False)
