"""SFT rows: validation errors and drops, and labels checked against independent computations: every assistant turn
(header, reply, end marker) and nothing else is labelled, multi-turn included, and the tokens are the ones SimPO
training feeds the model for the same conversation."""

import json

import pytest
from datasets import Dataset
from templates import GEMMA, LLAMA3

from simpo.data.chat_templates import MISTRAL_CHAT_TEMPLATE, apply_chat_template, set_chat_template
from simpo.data.mixer import mix_datasets
from simpo.data.tokenization import tokenize_row
from simpo.data.validation import DroppedRow
from simpo.errors import DataError
from simpo.sft.data import CONVERSATIONS
from simpo.sft.tokenization import TemplateError, render_conversation, tokenize_conversation, tokenize_conversations

# One token per special marker, one per character otherwise (conftest.char_tokenizer).
TAGGED = (
    "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "<|end|>{% endfor %}"
)
TAGGED_SPECIALS = ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def msg(role, content):
    return {"role": role, "content": content}


MULTI = [
    msg("system", "be nice"),
    msg("user", "hi"),
    msg("assistant", "hello"),
    msg("user", "bye"),
    msg("assistant", "see you"),
]


def expected(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Ids and labels from hand-written (text, is_assistant) pieces; with one token per character or marker, the
    tokens of a concatenation are the concatenation of the pieces' tokens."""
    ids, labels = [], []
    for text, on in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if on else [-100] * len(piece)
    return ids, labels


def test_every_assistant_turn_and_nothing_else_is_labelled(make_tokenizer):
    tok = make_tokenizer(TAGGED_SPECIALS, bos="<s>", eos="</s>", template=TAGGED)
    out = tokenize_conversation(MULTI, tok, max_length=256)
    ids, labels = expected(
        tok,
        [
            ("<s><|system|>be nice<|end|><|user|>hi<|end|>", False),
            ("<|assistant|>hello<|end|>", True),
            ("<|user|>bye<|end|>", False),
            ("<|assistant|>see you<|end|></s>", True),  # EOS appended once, as the end of the last reply
        ],
    )
    assert out["input_ids"] == ids and out["labels"] == labels and out["drop_reason"] == ""
    assert out["input_ids"].count(tok.bos_token_id) == 1 and out["input_ids"].count(tok.eos_token_id) == 1


def test_turn_boundaries_inside_merged_tokens_follow_the_offsets(make_tokenizer):
    """Without special markers, merges join the last character of one turn and the first of the next. Independent
    rule: a token belongs to the turn its last character is in (so a token straddling the start of a reply is the
    reply's, one straddling its end is not), read from the tokenizer's character offsets. (simpo's rule, SimPO's
    split: the joint tokens part from the prefix's own tokens one token early; the two agree when one merge crosses
    the boundary, as here.)"""
    template = "{% for m in messages %}{{ m['role'][0] | upper }}: {{ m['content'] }}\n{% endfor %}"
    tok = make_tokenizer(["</s>"], merges=[("\n", "A"), ("\n", "U")], eos="</s>", template=template)
    conversation = [msg("user", "yo"), msg("assistant", "no"), msg("user", "so"), msg("assistant", "go")]
    out = tokenize_conversation(conversation, tok, max_length=256)

    text = "U: yo\nA: no\nU: so\nA: go\n"
    spans = [(text.index("A: no"), text.index("U: so")), (text.index("A: go"), len(text))]
    encoded = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    in_reply = [any(s < end <= e for s, e in spans) for _, end in encoded["offset_mapping"]]
    assert out["input_ids"] == encoded["input_ids"] + [tok.eos_token_id]
    assert out["labels"] == [t if on else -100 for t, on in zip(encoded["input_ids"], in_reply)] + [tok.eos_token_id]
    merged = tok.convert_tokens_to_ids(["\nA", "\nU"])
    assert set(merged) <= set(out["input_ids"])  # the merges happened
    assert tok.convert_tokens_to_ids("\nA") in [t for t in out["labels"] if t != -100]
    assert tok.convert_tokens_to_ids("\nU") not in out["labels"]


@pytest.mark.parametrize("name", ["llama3", "mistral", "gemma"])
def test_tokens_are_what_simpo_training_feeds_for_the_same_conversation(make_tokenizer, name):
    specials = [
        "<s>",
        "</s>",
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<start_of_turn>",
        "<end_of_turn>",
        "[INST]",
        "[/INST]",
    ]
    bos = {"llama3": "<|begin_of_text|>", "mistral": "<s>", "gemma": "<s>"}[name]
    tok = make_tokenizer(specials, bos=bos, eos="</s>")
    set_chat_template(tok, {"llama3": LLAMA3, "mistral": None, "gemma": GEMMA}[name], f"org/{name}-7b")
    assert (tok.chat_template == MISTRAL_CHAT_TEMPLATE) == (name == "mistral")
    for conversation in (MULTI[1:3], MULTI, MULTI[1:]):
        sft = tokenize_conversation(conversation, tok, max_length=512)
        pair = {"chosen": conversation, "rejected": conversation[:-1] + [msg("assistant", "no")]}
        simpo = tokenize_row(apply_chat_template(pair, tok), tok, max_length=512, max_prompt_length=256)
        assert sft["input_ids"] == simpo["chosen_input_ids"]
        # SimPO labels the last reply; SFT labels it identically, and the earlier replies too.
        last = simpo["prompt_length"]
        assert sft["labels"][last:] == simpo["chosen_labels"][last:]
        earlier_replies = sum(m["role"] == "assistant" for m in conversation[:-1])
        assert any(t != -100 for t in sft["labels"][:last]) == (earlier_replies > 0)
    single = tokenize_conversation(MULTI[1:3], tok, max_length=512)
    pair = {"chosen": MULTI[1:3], "rejected": [MULTI[1], msg("assistant", "no")]}
    simpo = tokenize_row(apply_chat_template(pair, tok), tok, max_length=512, max_prompt_length=256)
    assert single["labels"] == simpo["chosen_labels"]  # one exchange: exactly SimPO's chosen labels


def test_mistral_template_folds_the_system_turn_and_labels_each_reply(make_tokenizer):
    tok = make_tokenizer(["<s>", "</s>", "[INST]", "[/INST]"], bos="<s>", eos="</s>", template=MISTRAL_CHAT_TEMPLATE)
    out = tokenize_conversation(MULTI, tok, max_length=256)
    ids, labels = expected(
        tok,
        [
            ("<s>[INST] be nice\n\nhi [/INST]", False),
            (" hello </s>", True),
            ("[INST] bye [/INST]", False),
            (" see you </s>", True),  # the template's EOS ends the reply: none added
        ],
    )
    assert out["input_ids"] == ids and out["labels"] == labels


def test_empty_system_turn_is_inserted_as_in_simpo(make_tokenizer):
    template = "{# system #}" + TAGGED
    tok = make_tokenizer(TAGGED_SPECIALS, bos="<s>", eos="</s>", template=template)
    text, spans = render_conversation(MULTI[1:3], tok)
    assert text == "<s><|system|><|end|><|user|>hi<|end|><|assistant|>hello<|end|>"
    assert [text[s:e] for s, e in spans] == ["<|assistant|>hello<|end|>"]
    assert render_conversation(MULTI[1:3], tok, auto_insert_empty_system_msg=False)[0].startswith("<s><|user|>")


def test_truncation_keeps_the_start_and_a_row_with_no_reply_left_is_dropped(make_tokenizer):
    tok = make_tokenizer(TAGGED_SPECIALS, bos="<s>", eos="</s>", template=TAGGED)
    full = tokenize_conversation(MULTI, tok, max_length=256)
    cut = tokenize_conversation(MULTI, tok, max_length=20)
    assert cut["input_ids"] == full["input_ids"][:20] and cut["labels"] == full["labels"][:20]
    assert cut["drop_reason"] == ""  # "<|assistant|>hel" survives
    gone = tokenize_conversation(MULTI, tok, max_length=14)  # the first reply starts at token 15
    assert gone["drop_reason"] == "assistant turns truncated away (max_length)"

    rows = Dataset.from_list([{"messages": MULTI}, {"messages": MULTI[1:3]}, {"messages": MULTI}])
    dataset, drops, counts = tokenize_conversations(rows, tok, max_length=14, name="train_dataset")
    assert len(dataset) == 1 and dataset.column_names == ["input_ids", "labels"]
    assert [d.index for d in drops] == [0, 2] and {(d.source, d.split) for d in drops} == {("train_dataset",) * 2}
    kept = dataset[0]
    assert counts == {
        "rows": 1,
        "tokens": len(kept["input_ids"]),
        "longest": len(kept["input_ids"]),
        "labelled": sum(t != -100 for t in kept["labels"]),
    }


def test_a_template_that_renders_beginnings_differently_is_refused(make_tokenizer):
    tok = make_tokenizer(TAGGED_SPECIALS, bos="<s>", eos="</s>", template=TAGGED + "{{ '!' }}")
    with pytest.raises(TemplateError, match="renders the first 3 turns of a conversation differently"):
        render_conversation(MULTI, tok)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "row,problem",
    [
        ({"prompt": "x"}, "'messages': missing (null)"),
        ({"messages": "hi"}, "'messages': expected a non-empty list"),
        ({"messages": [msg("user", "hi"), msg("bot", "yo")]}, "'messages': message 1 has unknown role 'bot'"),
        (
            {"messages": [msg("user", "hi"), {"role": "assistant", "content": 3}]},
            "'messages': message 1 content is int",
        ),
        (
            {"messages": [msg("user", "hi"), msg("assistant", "yo"), msg("user", "and?")]},
            "'messages': the last message must be the assistant's reply, not 'user'",
        ),
    ],
)
def test_a_malformed_row_stops_the_run_naming_source_split_row_and_fix(tmp_path, row, problem):
    good = {"messages": MULTI[1:3]}
    write(tmp_path / "train_sft.jsonl", [good, good, row])
    with pytest.raises(DataError) as error:
        mix_datasets({str(tmp_path): 1.0}, ["train_sft"], row_format=CONVERSATIONS)
    assert str(error.value).startswith(f"{tmp_path}/train_sft.jsonl line 3: {problem}")
    assert "SFT rows need 'messages'" in str(error.value)


def test_preference_data_given_to_sft_names_the_missing_column(tmp_path):
    write(tmp_path / "train.jsonl", [{"chosen": MULTI[1:3], "rejected": MULTI[1:3]}])
    with pytest.raises(DataError, match=r"\[train\] has no column 'messages' \(it has \['chosen', 'rejected'\]\)"):
        mix_datasets({str(tmp_path): 1.0}, ["train"], row_format=CONVERSATIONS)


def test_empty_replies_are_dropped_naming_their_row_in_the_source_or_stop_the_run(tmp_path, make_tokenizer):
    tok = make_tokenizer(TAGGED_SPECIALS, bos="<s>", eos="</s>", template=TAGGED)
    empty = {"messages": [msg("user", "hi"), msg("assistant", "  "), msg("user", "?"), msg("assistant", "ok")]}
    write(tmp_path / "train.jsonl", [{"messages": MULTI, "prompt_id": "a"}, empty, {"messages": MULTI[1:3]}])
    mixed = mix_datasets({str(tmp_path): 1.0}, ["train"], row_format=CONVERSATIONS)["train"]
    assert len(mixed) == 3 and mixed.column_names == ["messages", "origin"]
    kept, drops, _ = tokenize_conversations(mixed, tok, 256, "train_dataset")
    assert len(kept) == 2
    file = str(tmp_path / "train.jsonl")
    assert drops == [
        DroppedRow(source=str(tmp_path), split="train", index=1, file=file, line=2, reason="empty assistant reply")
    ]
    with pytest.raises(DataError, match=rf"^{file} line 2: empty assistant reply \(1 such rows\).*on_degenerate_rows"):
        tokenize_conversations(mixed, tok, 256, "train_dataset", on_degenerate_rows="error")


def test_cached_tokenisation_is_reused_only_by_the_same_code(tmp_path, make_tokenizer, monkeypatch):
    """datasets names a module function's cache by the function's name: an edited simpo must not reuse it."""
    import simpo.data.mixer

    tok = make_tokenizer(TAGGED_SPECIALS, bos="<s>", eos="</s>", template=TAGGED)
    write(tmp_path / "train.jsonl", [{"messages": MULTI}, {"messages": MULTI[1:3]}])
    rows = mix_datasets({str(tmp_path): 1.0}, ["train"], row_format=CONVERSATIONS)["train"]
    cache = lambda: tokenize_conversations(rows, tok, 64, "train")[0].cache_files[0]["filename"]
    first = cache()
    assert cache() == first  # same code, data and settings: the cached rows
    monkeypatch.setattr(simpo.data.mixer, "simpo_code_hash", lambda: "an edited simpo")
    assert cache() != first


def test_a_default_system_block_is_rendered_once_and_left_unlabelled(make_tokenizer):
    """A template that writes a default system block into a conversation without a system turn (Qwen2.5's,
    Llama-3.1's) writes it once, at the start, outside the labelled reply (rendered alone the reply would get one)."""
    tok = make_tokenizer(
        ["<|im_start|>", "<|im_end|>"],
        eos="<|im_end|>",
        template=(
            "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        ),
    )
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]
    text, spans = render_conversation(messages, tok, auto_insert_empty_system_msg=False)
    assert text == tok.apply_chat_template(messages, tokenize=False) and text.count("You are helpful") == 1
    assert [text[a:b] for a, b in spans] == ["<|im_start|>assistant\nHey<|im_end|>\n"]
