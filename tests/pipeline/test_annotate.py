"""simpo-annotate's scoring: batched, padded scores equal one-at-a-time scores; custom `score` heads; the plan."""

import os
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO
from refusals import refused
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from simpo.pipeline.annotate import RewardModel, conversation_ids, plan_units, scores_of, unused_token_id

TINY_REWARD = os.path.join(REPO, "assets", "tiny-reward")
ROW = {"messages": [{"role": "user", "content": "tell me about the kettle"}]}
REPLIES = ["sure", "the kettle is a tiny noisy thing that boils water <|eot_id|> and more", "no", "of course, gladly"]


def test_batched_scores_equal_unpadded_scores_even_when_eos_is_the_tokenizers_pad():
    tok = AutoTokenizer.from_pretrained(TINY_REWARD)
    sequences = [conversation_ids(ROW, reply, tok) for reply in REPLIES]
    assert sequences[0][0] == tok.bos_token_id and sequences[0].count(tok.bos_token_id) == 1
    assert all(seq[-1] == tok.eos_token_id for seq in sequences)  # each ends with <|eot_id|>, which pads by default
    pad = unused_token_id(sequences, 653, preferred=tok.eos_token_id)
    assert pad != tok.eos_token_id and all(pad not in seq for seq in sequences)
    batched = RewardModel(TINY_REWARD, "main", False, "float32", pad).score(sequences)
    model = AutoModelForSequenceClassification.from_pretrained(TINY_REWARD).eval()
    with torch.no_grad():  # one at a time, no padding: the logit at the last token
        alone = [model(torch.tensor([seq])).logits[0, 0].item() for seq in sequences]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(alone)) == len(alone)


def test_a_custom_head_score_wins_over_logits_and_several_outputs_are_refused():
    custom = SimpleNamespace(score=torch.tensor([[0.5], [-1.0]]), logits=torch.zeros(2, 19))
    assert scores_of(custom, 2) == [0.5, -1.0]
    assert scores_of(SimpleNamespace(logits=torch.tensor([[2.0], [3.0]])), 2) == [2.0, 3.0]
    with pytest.raises(ValueError, match="gives 3 values per response and no `score`"):
        scores_of(SimpleNamespace(logits=torch.zeros(2, 3)), 2)


def test_plan_batches_by_length_and_leaves_out_what_does_not_fit():
    units = plan_units({"train": [30, 5, 600, 12, 7], "test": [3]}, batch_size=2, limit=512)
    assert [(u.split, u.rows) for u in units] == [("train", (1, 4)), ("train", (3, 0)), ("test", (0,))]


def test_a_pad_id_outside_the_embedding_falls_back_to_an_unused_id_inside_it():
    tok = AutoTokenizer.from_pretrained(TINY_REWARD)
    tok.add_special_tokens({"pad_token": "<|pad|>"})  # an added token: id vocab_size, past the embedding (ArmoRM's)
    vocab_size = AutoModelForSequenceClassification.from_pretrained(TINY_REWARD).config.vocab_size
    assert tok.pad_token_id == vocab_size == 653
    sequences = [conversation_ids(ROW, reply, tok) for reply in REPLIES]
    pad = unused_token_id(sequences, vocab_size, preferred=tok.pad_token_id)
    assert 0 <= pad < vocab_size and all(pad not in seq for seq in sequences)
    assert unused_token_id(sequences, vocab_size, preferred=-1) == pad  # a negative id is no embedding row either
    batched = RewardModel(TINY_REWARD, "main", False, "float32", pad).score(sequences)  # old code: index error
    model = AutoModelForSequenceClassification.from_pretrained(TINY_REWARD).eval()
    with torch.no_grad():
        alone = [model(torch.tensor([seq])).logits[0, 0].item() for seq in sequences]
    assert batched == pytest.approx(alone, abs=1e-5)


def test_no_id_left_to_pad_with_is_an_error_naming_vocab_size():
    with pytest.raises(ValueError, match=r"Every id below the reward model's vocab_size \(3\)"):
        unused_token_id([[0, 1, 2]], 3, preferred=3)


def test_a_cut_generations_file_names_its_file_line_and_the_command_to_rerun(tmp_path, capsys):
    from simpo.pipeline.annotate import main

    (tmp_path / "generations").mkdir()
    path = tmp_path / "generations" / "train.jsonl"
    path.write_text('{"prompt": "q", "messages": [], "responses": ["a"]}\n{"prompt": "q2", "mess')
    refused(
        capsys,
        main,
        [os.path.join(REPO, "onpolicy_configs", "tiny-cpu.yaml"), f"--output_dir={tmp_path}"],
        rf"^{path} line 2 is not a whole JSON row \(.*; was the file cut short\?\)\. Rerun simpo-generate with the"
        " same config",
    )
