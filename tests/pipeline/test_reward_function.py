"""Verifiable rewards: simpo-annotate with `reward_function` instead of a reward model. Errors name the row; None
leaves a reply unscored; NaN is refused; batched functions get lists; the YAML key end to end (generate with
keep_columns -> annotate -> binarise); exactly one of reward_model / reward_function; the shipped examples."""

import json
import math
import os
from types import SimpleNamespace

import pytest
from conftest import REPO, TINY_MODEL
from refusals import refused

from simpo.errors import ConfigError, RewardFunctionError
from simpo.pipeline import annotate, binarise, generate
from simpo.pipeline import rewards as reward_functions
from simpo.pipeline.config import parse_pipeline_args
from simpo.pipeline.rewards import code_tests, exact_match, function_scores, load_reward_function, math_answer

HERE = "test_reward_function"  # this module, importable as the tests folder is on sys.path
CALLS = []


def length_score(messages, reply, row):
    return float(len(reply))


def raises_on_second(messages, reply, row):
    if row["prompt_id"] == "p1":
        raise ZeroDivisionError("boom")
    return 1.0


def none_for_short(messages, reply, row):
    return None if len(reply) < 3 else float(len(reply))


def nan_score(messages, reply, row):
    return math.nan


def text_score(messages, reply, row):
    return "good"


def batched_length(messages_list, replies, rows):
    CALLS.append(len(replies))
    assert isinstance(messages_list[0], list) and isinstance(replies[0], str) and isinstance(rows[0], dict)
    return [float(len(reply)) for reply in replies]


batched_length.batched = True


def batched_short(messages_list, replies, rows):
    return [1.0]


batched_short.batched = True


def generations(folder, rows_per_side: dict[str, list[list[str]]]) -> str:
    """A generations/ folder as simpo-generate writes it: rows with prompt, messages, prompt_id and responses."""
    source = os.path.join(folder, "generations")
    os.makedirs(source, exist_ok=True)
    for side, rows in rows_per_side.items():
        with open(os.path.join(source, f"{side}.jsonl"), "w") as f:
            for i, responses in enumerate(rows):
                prompt = f"question {side} {i}"
                f.write(
                    json.dumps(
                        {
                            "prompt": prompt,
                            "messages": [{"role": "user", "content": prompt}],
                            "prompt_id": f"p{i}",
                            "responses": responses,
                        }
                    )
                    + "\n"
                )
    return source


def annotate_args(tmp_path, function, seeds="[1, 2]") -> list[str]:
    return [
        "onpolicy_configs/tiny-cpu.yaml",
        "--reward_model=",
        f"--reward_function={function}",
        f"--output_dir={tmp_path}",
        f"--seeds={seeds}",
        "--reward_batch_size=3",
    ]


def read(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_scores_follow_the_function_and_none_leaves_a_reply_unscored(tmp_path):
    generations(tmp_path, {"train": [["a", "abcd", "xyz"], ["xyz", "no", "ab"]], "test": [["abc", "ab", "abcde"]]})
    args = annotate_args(tmp_path, f"{HERE}:none_for_short", seeds="[1, 2, 3]")
    annotate.main(args)
    train = read(tmp_path / "annotations" / "train.jsonl")
    assert [row["scores"] for row in train] == [[None, 4.0, 3.0], [3.0, None, None]]
    assert train[0]["prompt_id"] == "p0" and train[0]["responses"] == ["a", "abcd", "xyz"]
    summary = binarise.binarise_main(args)
    assert summary["train"]["dropped"] == {"fewer than two scored, non-empty responses": 1}  # None is no candidate
    pair = read(tmp_path / "dataset" / "train.jsonl")[0]
    assert (pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]) == ("abcd", "xyz")


def test_an_exception_names_the_file_line_prompt_id_and_response(tmp_path, monkeypatch):
    source = generations(tmp_path, {"train": [["a", "b"], ["c", "d"]]})
    monkeypatch.setenv("SIMPO_TRACEBACK", "1")  # the exception itself, to see its cause
    with pytest.raises(RewardFunctionError) as err:
        annotate.main(annotate_args(tmp_path, f"{HERE}:raises_on_second"))
    message = str(err.value)
    assert f"{os.path.join(source, 'train.jsonl')} line 2 (prompt_id p1), response 1 of 2, seed 1" in message
    assert "ZeroDivisionError: boom" in message and f"{HERE}:raises_on_second" in message
    assert isinstance(err.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize("function, kind", [("nan_score", "NaN or infinite"), ("text_score", "a str")])
def test_nan_and_non_numbers_are_errors_naming_the_row(tmp_path, capsys, function, kind):
    generations(tmp_path, {"train": [["a", "b"]]})
    refused(
        capsys,
        annotate.main,
        annotate_args(tmp_path, f"{HERE}:{function}"),
        rf"\({kind}\) for .*line 1 \(prompt_id p0\), response 1 of 2",
    )
    assert not (tmp_path / "annotations" / "train.jsonl").exists()


def test_a_batched_function_gets_lists_of_reward_batch_size(tmp_path):
    generations(tmp_path, {"train": [["a", "bb"], ["ccc", "d"], ["ee", "fff"], ["g", "hh"]]})
    CALLS.clear()
    annotate.main(annotate_args(tmp_path, f"{HERE}:batched_length"))
    assert CALLS == [3, 3, 2]  # 8 replies, 3 at a time, in file order
    assert [row["scores"] for row in read(tmp_path / "annotations" / "train.jsonl")] == [
        [1.0, 2.0],
        [3.0, 1.0],
        [2.0, 3.0],
        [1.0, 2.0],
    ]


def test_a_batched_function_returning_too_few_scores_names_the_batch(tmp_path, capsys):
    generations(tmp_path, {"train": [["a", "b"], ["c", "d"]]})
    refused(
        capsys,
        annotate.main,
        annotate_args(tmp_path, f"{HERE}:batched_short"),
        r"one score per reply \(3\).*the batch .*line 1 .*line 2",
    )


def test_a_relaunch_with_another_function_is_refused(tmp_path, capsys):
    generations(tmp_path, {"train": [["a", "bb"]]})
    annotate.main(annotate_args(tmp_path, f"{HERE}:length_score"))
    refused(
        capsys,
        annotate.main,
        annotate_args(tmp_path, f"{HERE}:batched_length"),
        r"holds a run with other settings \(reward_function;",
    )


def test_exactly_one_of_reward_model_and_reward_function():
    both = ["onpolicy_configs/tiny-cpu.yaml", "--reward_function=simpo.pipeline.rewards:exact_match"]
    with pytest.raises(ConfigError, match="exactly one of reward_model"):
        parse_pipeline_args(both, "simpo-annotate")
    with pytest.raises(ConfigError, match="exactly one of reward_model"):
        parse_pipeline_args(["onpolicy_configs/tiny-cpu.yaml", "--reward_model="], "simpo-annotate")
    with pytest.raises(ConfigError, match="package.module:function"):
        parse_pipeline_args(
            ["onpolicy_configs/tiny-cpu.yaml", "--reward_model=", "--reward_function=nocolon"], "simpo-annotate"
        )
    with pytest.raises(ConfigError, match="reward_dtype' has no effect with reward_function"):
        parse_pipeline_args(
            [
                "onpolicy_configs/tiny-cpu.yaml",
                "--reward_model=",
                "--reward_dtype=float32",
                "--reward_function=simpo.pipeline.rewards:exact_match",
            ],
            "simpo-annotate",
        )
    _, _, args = parse_pipeline_args(
        ["onpolicy_configs/tiny-cpu.yaml", "--reward_model=", "--reward_function=simpo.pipeline.rewards:exact_match"],
        "simpo-annotate",
    )
    assert load_reward_function(args.reward_function) is exact_match


def test_unloadable_functions_are_clear_errors():
    with pytest.raises(RewardFunctionError, match="cannot import no_such_module"):
        load_reward_function("no_such_module:f")
    with pytest.raises(RewardFunctionError, match="has no 'missing'"):
        load_reward_function("simpo.pipeline.rewards:missing")
    with pytest.raises(RewardFunctionError, match="not a function"):
        load_reward_function("simpo.pipeline.rewards:CODE_TIMEOUT_S")


def test_the_yaml_key_end_to_end_generate_keep_columns_annotate_binarise(tmp_path, capsys):
    """Prompts with a reference answer column; the tiny Llama samples; exact_match and a length score annotate."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for side, count in (("train", 6), ("test", 2)):
        rows = [
            {"prompt": f"say something {side} {i}", "prompt_id": f"{side}{i}", "answer": "the kettle"}
            for i in range(count)
        ]
        (prompts / f"{side}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"model_name_or_path: {TINY_MODEL}\ntorch_dtype: float32\ndataset_mixer:\n  {prompts}: 1.0\n"
        "dataset_splits: [train, test]\n"
        f"output_dir: {tmp_path / 'out'}\nseeds: [1, 2, 3]\ntemperature: 1.0\nmax_tokens: 6\n"
        "generation_batch_size: 4\nkeep_columns: [answer, prompt_id]\n"
        "reward_function: simpo.pipeline.rewards:exact_match\n"
    )
    generate.main([str(config)])
    rows = read(tmp_path / "out" / "generations" / "train.jsonl")
    assert [(r["answer"], r["prompt_id"]) for r in rows] == [("the kettle", f"train{i}") for i in range(6)]
    annotate.main([str(config)])
    scored = read(tmp_path / "out" / "annotations" / "train.jsonl")
    assert all(row["scores"] == [float(r.strip().lower() == "the kettle") for r in row["responses"]] for row in scored)
    annotate.main([str(config), f"--output_dir={tmp_path / 'out'}"])  # a relaunch: every unit done, same output
    # A graded score so that pairs form: the same generations scored by length in another pipeline folder.
    other = tmp_path / "by_length"
    os.makedirs(other)
    os.symlink(tmp_path / "out" / "generations", other / "generations")
    args = [str(config), f"--output_dir={other}", f"--reward_function={HERE}:length_score"]
    annotate.main(args)
    summary = binarise.binarise_main(args)
    pairs = read(other / "dataset" / "train.jsonl")
    assert summary["train"]["pairs"] == len(pairs) > 0
    assert all(len(p["chosen"][-1]["content"]) > len(p["rejected"][-1]["content"]) for p in pairs)

    # what users see: the message alone, exit status 2
    for bad, message in [
        (
            [f"--output_dir={tmp_path / 'x'}", "--keep_columns=[reference]"],
            r"has no column \['reference'\] for keep_columns",
        ),
        (["--keep_columns=[messages]"], r"^keep_columns \['messages'\]"),
    ]:
        refused(capsys, generate.main, [str(config), *bad], message)


def test_the_examples(monkeypatch):
    row = {"answer": "Wtbk"}
    assert exact_match([], " wtbk\n", row) == 1.0 and exact_match([], "wtkb", row) == 0.0
    gsm = {"answer": "She pays 3 * 4 = 12 dollars.\n#### 1,200"}
    assert math_answer([], "so the answer is 1200.", gsm) == 1.0
    assert math_answer([], "12 dollars, then 1,200", gsm) == 1.0
    assert math_answer([], "it is 12", gsm) == 0.0 and math_answer([], "no idea", gsm) == 0.0
    with pytest.raises(ValueError, match="holds no number"):
        math_answer([], "3", {"answer": "none"})
    assert code_tests.batched is True
    tests = "assert add(2, 3) == 5"
    replies = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    return a - b",
        "```py\nimport sys\nsys.exit(0)\n```",
        "while True: pass",
    ]
    monkeypatch.setattr(reward_functions, "CODE_TIMEOUT_S", 1)
    scores = code_tests([[]] * len(replies), replies, [{"tests": tests}] * len(replies))
    assert scores == [1.0, 0.0, 1.0, 0.0]  # a program that exits 0 before its tests passes: sandbox and review


def test_function_scores_on_a_second_process_returns_none(tmp_path, monkeypatch):
    source = generations(tmp_path, {"train": [["a", "b"]]})
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = SimpleNamespace(reward_function=f"{HERE}:length_score", reward_batch_size=8, seeds=[1, 2])
    sides = {"train": read(os.path.join(source, "train.jsonl"))}
    assert function_scores(args, sides, source, str(tmp_path / "annotations")) is None  # its share: no unit
