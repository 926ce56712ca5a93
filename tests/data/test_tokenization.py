from simpo.data.tokenization import split_prompt_answer, tokenize_row


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_split_without_boundary_merge(make_tokenizer):
    tok = make_tokenizer(["<s>", "</s>"], bos="<s>", eos="</s>")
    prompt_ids, answer_ids = split_prompt_answer(tok, "ab", "cd")
    assert prompt_ids == ids(tok, "ab") and answer_ids == ids(tok, "cd")


def test_split_moves_back_one_token_when_a_merge_crosses_the_boundary(make_tokenizer):
    tok = make_tokenizer(["<s>", "</s>"], merges=[("x", "y")], bos="<s>", eos="</s>")
    # "ax" + "yb": jointly "a", "xy", "b"; the prompt alone is "a", "x".
    prompt_ids, answer_ids = split_prompt_answer(tok, "ax", "yb")
    assert prompt_ids == ids(tok, "a")
    assert answer_ids == ids(tok, "xyb") and len(answer_ids) == 2


def test_bos_once_eos_once_and_prompt_labels_masked(make_tokenizer):
    tok = make_tokenizer(["<s>", "</s>"], bos="<s>", eos="</s>")
    bos, eos = tok.bos_token_id, tok.eos_token_id
    row = {"prompt": "<s>ab", "chosen": "cd</s>", "rejected": "e"}
    out = tokenize_row(row, tok, max_length=64, max_prompt_length=32)
    assert out["chosen_input_ids"] == [bos] + ids(tok, "ab") + ids(tok, "cd") + [eos]
    assert out["rejected_input_ids"] == [bos] + ids(tok, "ab") + ids(tok, "e") + [eos]
    assert out["chosen_labels"] == [-100, -100, -100] + ids(tok, "cd") + [eos]
    assert out["prompt_length"] == 3


def test_tokenizer_without_bos_does_not_crash(make_tokenizer):
    tok = make_tokenizer(["</s>"], eos="</s>")
    out = tokenize_row({"prompt": "ab", "chosen": "c", "rejected": "d"}, tok, 64, 32)
    assert out["chosen_input_ids"] == ids(tok, "abc") + [tok.eos_token_id]


def test_keep_end_truncates_prompt_keeping_bos_then_responses(make_tokenizer):
    tok = make_tokenizer(["<s>", "</s>"], bos="<s>", eos="</s>")
    bos, eos = tok.bos_token_id, tok.eos_token_id
    row = {"prompt": "0123456789", "chosen": "abcdefgh", "rejected": "xy"}
    # prompt 11 (with BOS) + longer response 9 (with EOS) = 20 > 12: prompt -> 4 tokens (BOS + last 3), still
    # 4 + 9 > 12: responses -> 12 - 4 = 8 tokens.
    out = tokenize_row(row, tok, max_length=12, max_prompt_length=4, truncation_mode="keep_end")
    assert out["chosen_input_ids"][:4] == [bos] + ids(tok, "789")
    assert out["chosen_input_ids"][4:] == ids(tok, "abcdefgh")  # EOS cut with the response
    assert out["rejected_input_ids"][4:] == ids(tok, "xy") + [eos]
    assert len(out["chosen_input_ids"]) == 12
    assert out["chosen_labels"][:4] == [-100] * 4


def test_keep_start_truncates_prompt_from_the_end(make_tokenizer):
    tok = make_tokenizer(["<s>", "</s>"], bos="<s>", eos="</s>")
    row = {"prompt": "0123456789", "chosen": "ab", "rejected": "c"}
    out = tokenize_row(row, tok, max_length=8, max_prompt_length=5, truncation_mode="keep_start")
    assert out["chosen_input_ids"] == [tok.bos_token_id] + ids(tok, "0123") + ids(tok, "ab") + [tok.eos_token_id]


def test_no_truncation_when_it_fits(make_tokenizer):
    tok = make_tokenizer(["<s>", "</s>"], bos="<s>", eos="</s>")
    row = {"prompt": "0123456789", "chosen": "ab", "rejected": "c"}
    out = tokenize_row(row, tok, max_length=14, max_prompt_length=2)
    assert len(out["chosen_input_ids"]) == 14
