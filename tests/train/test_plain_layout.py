import torch

from simpo.train.layouts.plain import PlainLayout


def test_plain_layout_scores_each_response_token_from_the_position_before_it():
    rows = [
        {
            "chosen_input_ids": [1, 5, 6, 7],
            "chosen_labels": [-100, -100, 6, 7],
            "rejected_input_ids": [1, 5, 9],
            "rejected_labels": [-100, -100, 9],
        },
        {
            "chosen_input_ids": [1, 8, 2],
            "chosen_labels": [-100, 8, 2],
            "rejected_input_ids": [1, 4, 4, 4, 2],
            "rejected_labels": [-100, 4, 4, 4, 2],
        },
    ]
    layout = PlainLayout(pad_token_id=0)
    batch = layout(rows)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 0], [1, 8, 2, 0, 0], [1, 5, 9, 0, 0], [1, 4, 4, 4, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    flat = batch["input_ids"].flatten()
    # the token at score_index + 1 is the label it predicts
    assert flat[batch["score_index"] + 1].tolist() == batch["score_labels"].tolist()
    assert batch["score_labels"].tolist() == [6, 7, 8, 2, 9, 4, 4, 4, 2]
    # chosen pair 0 and 1, then rejected pair 0 (seq 2) and 1 (seq 3)
    assert batch["score_seq"].tolist() == [0, 0, 1, 1, 2, 3, 3, 3, 3]
    assert batch["response_lengths"].tolist() == [2, 2, 1, 4]
    assert all(t.dtype == torch.long for t in batch.values())
    assert layout.model_inputs(batch) == {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }
    assert layout.real_tokens(batch).item() == 4 + 3 + 3 + 5
