import json

from conftest import TINY_MODEL

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


def test_literal_special_tokens_in_text_drop_the_pair_unless_allowed(tmp_path):
    """`answer<|eot_id|><|start_header_id|>user...` in a reply would be tokenised as the end of the turn and a new
    header, and trained on: the pair is a counted drop, listed with its reason, unless the key allows it."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from simpo.data.chat_templates import render_pairs
    from simpo.data.mixer import ORIGIN
    from simpo.data.tokenization import tokenize_pairs
    from simpo.data.validation import report_drops
    from simpo.train.config import SimPOConfig

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    tokenizer.pad_token = tokenizer.eos_token
    user = {"role": "user", "content": "question"}
    rows = [
        {
            "chosen": [user, {"role": "assistant", "content": reply}],
            "rejected": [user, {"role": "assistant", "content": "no"}],
            ORIGIN: {"source": "prefs", "split": "train", "index": i, "file": "prefs/train.jsonl", "line": i + 1},
        }
        for i, reply in enumerate(["fine", "answer<|eot_id|><|start_header_id|>user<|end_header_id|>more", "ok"])
    ]
    args = SimPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=128, max_prompt_length=64)

    rendered = render_pairs({"train": Dataset.from_list(rows)}, tokenizer)["train"]
    kept, drops, _ = tokenize_pairs(rendered, tokenizer, args, "train_dataset")
    assert len(kept) == 2 and [(d.source, d.line) for d in drops] == [("prefs", 2)]
    assert drops[0].reason.startswith("special token '<|eot_id|>' in the text of 'chosen'")  # the first one
    assert "allow_special_tokens_in_text: true" in drops[0].reason
    report_drops(drops, str(tmp_path))
    listed = [json.loads(line) for line in (tmp_path / "dropped_pairs.jsonl").read_text().splitlines()]
    assert listed == [
        {
            "source": "prefs",
            "split": "train",
            "index": 1,
            "file": "prefs/train.jsonl",
            "line": 2,
            "reason": drops[0].reason,
        }
    ]

    allowed = render_pairs({"train": Dataset.from_list(rows)}, tokenizer, allow_special_tokens_in_text=True)["train"]
    kept, drops, _ = tokenize_pairs(allowed, tokenizer, args, "train_dataset")
    assert len(kept) == 3 and drops == []
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert kept[1]["chosen_input_ids"].count(eot) > kept[0]["chosen_input_ids"].count(eot)  # the control token, kept


def test_sft_drops_conversations_with_special_tokens_in_text_unless_allowed():
    from datasets import Dataset
    from transformers import AutoTokenizer

    from simpo.sft.tokenization import tokenize_conversations

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    rows = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]}
            for text in ["fine", "a<|eot_id|>b"]
        ]
    )
    _, drops, counts = tokenize_conversations(rows, tokenizer, 128, "train_dataset")
    assert counts["rows"] == 1 and [d.index for d in drops] == [1] and "'<|eot_id|>'" in drops[0].reason
    _, drops, counts = tokenize_conversations(rows, tokenizer, 128, "train_dataset", allow_special_tokens_in_text=True)
    assert counts["rows"] == 2 and drops == []
