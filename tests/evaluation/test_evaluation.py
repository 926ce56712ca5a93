"""simpo-eval-setup and simpo-answer on a real tiny run (2 training steps of the tiny config, in outputs/tiny-simpo-cpu
of a scratch working directory, as the README's quick start leaves it)."""

import json
import os
import re
import shutil
import subprocess

import pytest
import torch
import yaml
from conftest import REPO, TINY_DATA, TINY_MODEL
from refusals import refused
from tiny_runs import Rambler, train_tiny
from transformers import AutoModelForCausalLM, GenerationConfig

from simpo.config.parser import parse_args
from simpo.config.run_record import run_settings
from simpo.data.tokenization import generation_prompt_ids
from simpo.evaluation import answer as answer_cli
from simpo.evaluation import setup as eval_setup
from simpo.evaluation.templates import ALPACA_EVAL_CONVERSATIONS, alpaca_eval_ids, vllm_chat_ids
from simpo.models.loading import training_tokenizer
from simpo.train.config import SIMPO_ARGUMENTS, SimPOConfig

RUN = "outputs/tiny-simpo-cpu"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch directory holding a finished tiny run; tests run from it (commands are relative to it)."""
    folder = tmp_path_factory.mktemp("evaluation")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        train_tiny(RUN)
        yield folder
    finally:
        os.chdir(cwd)


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    return workdir


def test_a_run_records_its_settings_and_they_parse_back(in_workdir):
    model_args, data_args, training_args = parse_args([os.path.join(RUN, "run_config.yaml")], SIMPO_ARGUMENTS)
    assert model_args.model_name_or_path == TINY_MODEL and data_args.dataset_mixer == {TINY_DATA: 1.0}
    assert training_args.max_steps == 2 and training_args.beta == 2.0 and training_args.output_dir == RUN
    assert isinstance(training_args, SimPOConfig) and run_settings(RUN) == (model_args, data_args)


def test_eval_setup_writes_the_three_set_ups_with_token_parity(in_workdir, capsys):
    eval_setup.main([RUN])
    assert "token parity with training checked" in capsys.readouterr().out
    folder = os.path.join(RUN, "eval")
    alpaca = yaml.safe_load(open(os.path.join(folder, "alpaca_eval", "tiny-simpo-cpu", "configs.yaml")))
    kwargs = alpaca["tiny-simpo-cpu"]["completions_kwargs"]
    # llama3 family: temperature 0.9, top_p 1.0, 4096 new tokens, capped at the tiny model's 512 positions
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["max_new_tokens"]) == (0.9, 1.0, 512)
    assert kwargs["model_name"] == os.path.abspath(RUN) and kwargs["stop_token_ids"] == [1]
    # what alpaca_eval's vllm_local_completions reads: a model_kwargs dict; no do_sample (true means beam search)
    assert kwargs["model_kwargs"] == {"trust_remote_code": False} and "do_sample" not in kwargs
    template = open(alpaca["tiny-simpo-cpu"]["prompt_template"]).read()
    gen_answer = yaml.safe_load(open(os.path.join(folder, "arena_hard", "gen_answer_config.yaml")))
    assert gen_answer["temperature"] == 0.0 and gen_answer["model_list"] == ["tiny-simpo-cpu"]
    assert "stop_token_ids" not in gen_answer  # read by no script
    api = yaml.safe_load(open(os.path.join(folder, "arena_hard", "api_config.yaml")))
    assert api["tiny-simpo-cpu"]["endpoints"][0]["api_base"] == "http://localhost:8000/v1"
    # gen_answer.py asks for max_tokens - len(tokenizer(question)) - 300 with the endpoint's tokenizer, and vLLM
    # refuses a request whose prompt and max_tokens pass the model's 512 positions: each question's fits, tightly
    assert api["tiny-simpo-cpu"]["tokenizer"] == os.path.abspath(RUN)
    run_tokenizer = training_tokenizer(RUN, *run_settings(RUN))
    for text in ["What is the capital of France?", "Hi", "  spaced  ", "word " * 200]:
        asked = gen_answer["max_tokens"] - len(run_tokenizer(text)["input_ids"]) - 300
        prompt = len(generation_prompt_ids([{"role": "user", "content": text}], run_tokenizer))
        assert 512 - 20 <= prompt + asked <= 512
    chat = open(os.path.join(folder, "arena_hard", "chat_template.jinja")).read()
    # The written files, put through their tools' paths, prompt as training did (checked here independently).
    tokenizer = training_tokenizer(RUN, *run_settings(RUN))
    for turns in ALPACA_EVAL_CONVERSATIONS:
        expected = generation_prompt_ids(turns, tokenizer)
        assert alpaca_eval_ids(template, turns, tokenizer) == expected == vllm_chat_ids(chat, turns, tokenizer)
    parity = json.load(open(os.path.join(folder, "parity.json")))
    assert parity["family"] == "llama3" and parity["parity"]["arena_hard"]["prompts"] == 7
    assert "## MT-Bench" in open(os.path.join(folder, "EVAL.md")).read()


def test_eval_setup_stops_at_the_template_turn_end_when_the_run_lists_another_eos(in_workdir, tmp_path):
    # A Llama-3 base model's SFT output lists only <|end_of_text|>; its template ends turns with <|eot_id|> (here 1).
    run = tmp_path / "base-like-run"
    shutil.copytree(RUN, run, ignore=shutil.ignore_patterns("eval"))
    GenerationConfig(bos_token_id=0, eos_token_id=2).save_pretrained(run)
    eval_setup.main([str(run)])
    alpaca = yaml.safe_load(open(run / "eval" / "alpaca_eval" / "base-like-run" / "configs.yaml"))
    assert alpaca["base-like-run"]["completions_kwargs"]["stop_token_ids"] == [2, 1]
    # the vLLM server reads its stop tokens from the generation config EVAL.md's `vllm serve` names
    served = GenerationConfig.from_pretrained(run / "eval" / "arena_hard" / "generation_config")
    assert served.eos_token_id == [2, 1] and served.temperature is None and served.top_p is None
    serve = next(line for line in open(run / "eval" / "EVAL.md") if "vllm serve" in line)
    assert f"--generation-config {run}/eval/arena_hard/generation_config " in serve


def test_a_double_bos_template_is_refused_and_nothing_is_written(in_workdir, tmp_path, capsys):
    broken = tmp_path / "llama3.txt"
    broken.write_text(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{instruction}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_:
        eval_setup.main([RUN, f"--alpaca-prompt-template={broken}", f"--eval-dir={out}"])
    assert exit_.value.code == 1
    message = capsys.readouterr().err
    assert "refused, nothing written" in message and "position 1 of check prompt 0" in message
    assert "training fed token 2 '<|start_header_id|>', alpaca_eval prompt template gives token 0" in message
    assert "'<|begin_of_text|>'" in message and not out.exists()


def test_the_docs_evaluation_commands_are_the_ones_the_tool_writes(in_workdir):
    eval_setup.main([RUN])
    written = set(open(os.path.join(RUN, "eval", "EVAL.md")).read().splitlines())
    section = open(os.path.join(REPO, "docs", "evaluation.md")).read()
    commands = [
        line for block in re.findall(r"```bash\n(.*?)\n```", section, flags=re.S) for line in block.splitlines()
    ]
    assert commands[0] == f"simpo-eval-setup {RUN}"  # the command that writes the rest
    assert len(commands) > 15 and [c for c in commands[1:] if c not in written] == []


def write_questions(path, rows, as_list=False):
    path.write_text(json.dumps(rows) if as_list else "".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def greedy(model, ids, n):
    """Plain greedy decoding, no generate(): the reference for a temperature-0 answer."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            token = model(torch.tensor([seq])).logits[0, -1].argmax().item()
            if token == 1:  # <|eot_id|>
                break
            seq.append(token)
    return seq[len(ids) :]


def test_simpo_answer_writes_each_benchmarks_answer_file(in_workdir, tmp_path):
    alpaca = write_questions(
        tmp_path / "alpaca.json",
        [{"instruction": "Name a colour.", "dataset": "x"}, {"instruction": "What is 2+2?", "dataset": "y"}],
        True,
    )
    answer_cli.main([RUN, "--benchmark", "alpaca_eval", "--questions", alpaca, "--max-new-tokens", "6"])
    outputs = json.load(open(os.path.join(RUN, "eval", "alpaca_eval", "model_outputs.json")))
    assert [(o["instruction"], o["generator"], o["dataset"]) for o in outputs] == [
        ("Name a colour.", "tiny-simpo-cpu", "x"),
        ("What is 2+2?", "tiny-simpo-cpu", "y"),
    ]

    arena = write_questions(tmp_path / "arena.jsonl", [{"question_id": "q1", "turns": [{"content": "Explain TCP."}]}])
    out = tmp_path / "arena" / "model_answer" / "tiny.jsonl"
    answer_cli.main(
        [
            RUN,
            "--benchmark",
            "arena_hard",
            "--questions",
            arena,
            "--out",
            str(out),
            "--name",
            "tiny",
            "--max-new-tokens",
            "6",
        ]
    )
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["question_id"] == "q1" and record["model_id"] == "tiny"
    turn = record["choices"][0]["turns"][0]
    assert set(turn) == {"content", "token_len"}


def test_mt_bench_answers_greedy_categories_exactly_and_carries_the_first_answer(in_workdir, tmp_path):
    questions = [
        {"question_id": 111, "category": "math", "turns": ["hi", "hi again"]},
        {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]},
    ]
    path = write_questions(tmp_path / "mt.jsonl", questions)
    out = tmp_path / "mt" / "tiny.jsonl"
    answer_cli.main([RUN, "--benchmark", "mt_bench", "--questions", path, "--out", str(out), "--max-new-tokens", "8"])
    records = {r["question_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {111, 81} and all(len(r["choices"][0]["turns"]) == 2 for r in records.values())
    # "math" decodes greedily: both turns equal plain greedy decoding of the training prompt ids, the second with
    # the model's first answer in its conversation.
    model_args, data_args = run_settings(RUN)
    tokenizer = training_tokenizer(RUN, model_args, data_args)
    model = AutoModelForCausalLM.from_pretrained(RUN).eval()
    first, second = records[111]["choices"][0]["turns"]
    assert first and second  # real text, not an immediate end of turn
    turns = [{"role": "user", "content": "hi"}]
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert first == decode(greedy(model, generation_prompt_ids(turns, tokenizer), 8))
    turns += [{"role": "assistant", "content": first}, {"role": "user", "content": "hi again"}]
    assert second == decode(greedy(model, generation_prompt_ids(turns, tokenizer), 8))


def test_unknown_benchmark_is_an_error(in_workdir):
    with pytest.raises(SystemExit):
        eval_setup.main([RUN, "--benchmarks=alpaca_eval,mmlu"])


def test_simpo_answer_relaunched_resumes_and_refuses_another_batch_size(in_workdir, tmp_path, capsys):
    questions = write_questions(tmp_path / "alpaca.json", [{"instruction": f"Say {i}."} for i in range(3)], True)
    command = [
        RUN,
        "--benchmark",
        "alpaca_eval",
        "--questions",
        questions,
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path / "a.json"),
        "--batch-size",
        "1",
    ]
    answer_cli.main(command)
    first = json.loads((tmp_path / "a.json").read_text())
    answer_cli.main(command)  # the same command again: every unit is done, the answers are the same
    assert json.loads((tmp_path / "a.json").read_text()) == first and all(o["output"] is not None for o in first)
    # other units: resuming would mix two runs (or lose answers)
    refused(
        capsys,
        answer_cli.main,
        [*command[:-1], "3"],
        r"holds a run with other settings \(batch_size; e.g. batch_size: 1 then, 3",
    )


def test_simpo_answer_batch_size_below_one_is_refused(in_workdir, capsys):
    refused(
        capsys,
        answer_cli.main,
        [RUN, "--benchmark", "alpaca_eval", "--questions", "q.json", "--batch-size", "0"],
        re.escape("--batch-size must be at least 1 (got 0)"),
    )


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "holds no questions"),
        ("[]", "holds no questions"),
        ('[{"instruction": "a"}, {"prompt": "b"}]', r"row 1: no question text in 'instruction' for alpaca_eval"),
        ('[{"instruction": "a"}, "b"]', r"row 1: a question is a JSON object with 'instruction', not str"),
        ('[{"instruction": "a"},\n {"instruction": ', r"line 2: not JSON"),
    ],
)
def test_simpo_answer_names_what_is_wrong_with_a_question_file(in_workdir, tmp_path, capsys, content, message):
    path = tmp_path / "questions.json"
    path.write_text(content)
    refused(capsys, answer_cli.main, [RUN, "--benchmark", "alpaca_eval", "--questions", str(path)], message)


def test_jsonl_question_files_name_the_broken_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"turns": ["a"]}\n\n{"turns": ["b"]\n')
    with pytest.raises(ValueError, match=r"q.jsonl line 3: not JSON"):
        answer_cli.read_questions(str(path), "mt_bench")


@pytest.mark.parametrize("command", ["eval_setup", "answer"])
def test_a_folder_that_is_not_a_finished_run_is_named(in_workdir, tmp_path, capsys, command):
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    main = (
        eval_setup.main
        if command == "eval_setup"
        else lambda argv: answer_cli.main([*argv, "--benchmark", "alpaca_eval", "--questions", "q.json"])
    )
    for folder, message in (
        (empty, "holds no saved model (no config.json or adapter_config.json and no tokenizer_config.json)"),
        (missing, "is not a folder"),
    ):
        refused(capsys, main, [str(folder)], re.escape(f"{folder} {message}"))


def test_run_config_masks_a_set_hub_token_and_keeps_unset_tokens_unset(tmp_path):
    from simpo.config.arguments import DataArguments, ModelArguments
    from simpo.config.run_record import save_run_config

    args = SimPOConfig(output_dir=str(tmp_path), use_cpu=True, hub_token="hf_secret")
    text = open(save_run_config(ModelArguments(), DataArguments(), args)).read()
    assert "hf_secret" not in text and yaml.safe_load(text)["hub_token"] == "<HUB_TOKEN>"
    args = SimPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert yaml.safe_load(open(save_run_config(ModelArguments(), DataArguments(), args)))["hub_token"] is None


def test_simpo_answer_does_not_resume_answers_of_a_model_retrained_into_the_folder(in_workdir, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(RUN, run, ignore=shutil.ignore_patterns("eval"))
    questions = write_questions(tmp_path / "alpaca.json", [{"instruction": "Say 1."}], True)
    command = [str(run), "--benchmark", "alpaca_eval", "--questions", questions, "--max-new-tokens", "4"]
    answer_cli.main(command)
    from safetensors.torch import load_file, save_file

    weights = str(run / "model.safetensors")
    save_file({name: tensor * 1.001 for name, tensor in load_file(weights).items()}, weights)  # retrained
    refused(capsys, answer_cli.main, command, r"holds a run with other settings \(model;")


def test_a_lora_run_saves_an_adapter_that_simpo_answer_loads(in_workdir, tmp_path):
    """A LoRA run's folder holds the adapter (no base config.json beside it, which would make loaders look for full
    weights there); simpo-answer samples from the adapter merged into its base model."""
    from peft import AutoPeftModelForCausalLM

    from simpo.models.loading import load_for_generation

    run = tmp_path / "lora"
    train_tiny(run, TINY_MODEL, "--use_peft=true", "--lora_r=4")
    assert (run / "adapter_config.json").exists() and not (run / "config.json").exists()
    merged, adapter = load_for_generation(str(run)), AutoPeftModelForCausalLM.from_pretrained(str(run))
    ids = torch.tensor([[1, 5, 9, 13]])
    torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, rtol=1e-5, atol=1e-5)
    questions = write_questions(tmp_path / "alpaca.json", [{"instruction": "Name a colour."}], True)
    answer_cli.main(
        [
            str(run),
            "--benchmark",
            "alpaca_eval",
            "--questions",
            questions,
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "answers.json"),
        ]
    )
    assert isinstance(json.loads((tmp_path / "answers.json").read_text())[0]["output"], str)
    # vLLM loads full weights: the set-ups point it at the adapter merged into its base model, not the adapter
    eval_setup.main([str(run)])
    alpaca = yaml.safe_load(open(run / "eval" / "alpaca_eval" / "lora" / "configs.yaml"))
    served = alpaca["lora"]["completions_kwargs"]["model_name"]
    assert served == str(run / "eval" / "model") and os.path.exists(os.path.join(served, "config.json"))
    torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(served)(ids).logits, adapter(ids).logits)
    serve = next(line for line in open(run / "eval" / "EVAL.md") if "vllm serve" in line)
    assert serve.split()[2] == served and "merged into the base model" in open(run / "eval" / "EVAL.md").read()
    assert json.load(open(run / "eval" / "parity.json"))["served_model"] == served


def test_a_relaunch_with_other_settings_says_what_changed(tmp_path, caplog):
    from simpo.config.arguments import DataArguments, ModelArguments
    from simpo.config.run_record import save_run_config

    save_run_config(ModelArguments(), DataArguments(), SimPOConfig(output_dir=str(tmp_path), use_cpu=True))
    save_run_config(ModelArguments(), DataArguments(), SimPOConfig(output_dir=str(tmp_path), use_cpu=True))
    assert "held other settings" not in caplog.text  # the same launch again: nothing to say
    save_run_config(
        ModelArguments(),
        DataArguments(),
        SimPOConfig(output_dir=str(tmp_path), use_cpu=True, beta=5.0, learning_rate=1e-6),
    )
    assert "held other settings than this launch's (learning_rate: 5e-05 -> 1e-06, beta: 2.0 -> 5.0)" in caplog.text


def test_simpo_answer_caps_new_tokens_at_the_context_the_prompt_leaves(in_workdir, tmp_path, monkeypatch, caplog):
    """The tiny model has 512 positions; AlpacaEval's setting asks for thousands of new tokens: each prompt gets at
    most the positions it leaves, and the log says so."""
    asked = []

    class Recorder:
        def set_sampling(self, temperature, top_p, max_tokens):
            self.max_tokens = max_tokens

        def generate(self, prompts, batch_seed, row_seeds):
            asked.extend((len(ids), self.max_tokens) for ids in prompts)
            return ["ok"] * len(prompts)

    monkeypatch.setattr(answer_cli, "make_backend", lambda *args: Recorder())
    questions = [
        {"instruction": "Name a colour, please.", "dataset": "x"},
        {"instruction": "Hi " * 100, "dataset": "y"},
    ]
    path = write_questions(tmp_path / "long.json", questions, True)
    with caplog.at_level("INFO", logger="simpo"):
        answer_cli.main([RUN, "--benchmark", "alpaca_eval", "--questions", path, "--out", str(tmp_path / "a.json")])
    assert len(asked) == 2 and all(prompt + new == 512 for prompt, new in asked)
    assert "2 question(s) would decode past the model's 512 positions" in caplog.text
    assert answer_cli.tokens_left(100, 30, 512) == 100 and answer_cli.tokens_left(600, 30, None) == 600
    assert answer_cli.tokens_left(100, 512, 512) == 0 == answer_cli.tokens_left(100, 600, 512)


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_eval_md_alpaca_eval_command_names_its_config_folder(in_workdir, tmp_path, absolute):
    """alpaca_eval reads --model_configs relative to its own models_configs folder unless the path is absolute
    (utils.load_configs): EVAL.md gives an absolute one, for a relative OUTPUT_DIR and an absolute one alike."""
    run = RUN
    if absolute:
        run = str(tmp_path / "run")
        shutil.copytree(RUN, run, ignore=shutil.ignore_patterns("eval"))
    eval_setup.main([run])
    line = next(line for line in open(os.path.join(run, "eval", "EVAL.md")) if "evaluate_from_model" in line)
    quoted = line.split("--model_configs ")[1].split(" --")[0]
    expanded = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, text=True, check=True)
    folder = expanded.stdout
    assert os.path.isabs(folder) and os.path.isfile(os.path.join(folder, "configs.yaml")), folder


def test_mt_bench_a_second_turn_that_does_not_fit_is_left_empty_and_named(in_workdir, tmp_path, monkeypatch, caplog):
    """A first answer that fills the context leaves no room for the second turn: that turn is answered empty (the
    answer file keeps every question, as FastChat's judge needs) and the log names it; the others go on."""
    model_args, data_args = run_settings(RUN)
    tokenizer = training_tokenizer(RUN, model_args, data_args)

    monkeypatch.setattr(answer_cli, "make_backend", lambda *args: Rambler(tokenizer, "at length", "ok"))
    questions = [
        {"question_id": 7, "category": "writing", "turns": ["Write at length.", "Now shorter."]},
        {"question_id": 8, "category": "math", "turns": ["hi", "hi again"]},
    ]
    path = write_questions(tmp_path / "mt.jsonl", questions)
    out = tmp_path / "mt" / "tiny.jsonl"
    with caplog.at_level("INFO", logger="simpo"):
        answer_cli.main([RUN, "--benchmark", "mt_bench", "--questions", path, "--out", str(out)])
    records = {r["question_id"]: r["choices"][0]["turns"] for r in map(json.loads, out.read_text().splitlines())}
    assert records == {7: ["word " * 400, ""], 8: ["ok", "ok"]}
    assert "Turn 2: 1 question(s) left unanswered (an empty answer in the file)" in caplog.text
    assert "fills the model's 512 positions: 7" in caplog.text


def test_a_first_turn_that_does_not_fit_is_refused_naming_the_question(in_workdir, tmp_path, capsys):
    path = write_questions(tmp_path / "long.jsonl", [{"question_id": "q9", "turns": ["word " * 600]}])
    refused(
        capsys,
        answer_cli.main,
        [RUN, "--benchmark", "arena_hard", "--questions", path],
        r"Question 'q9': its prompt has \d+ tokens, the model's context 512 positions: no room for an answer",
    )


def test_the_documented_question_files_load(tmp_path):
    """docs/evaluation.md's question-file examples, one per benchmark in the order alpaca_eval, arena_hard,
    mt_bench, read as simpo-answer reads them."""
    section = open(os.path.join(REPO, "docs", "evaluation.md")).read().split("## Question files")[1].split("\n## ")[0]
    examples = re.findall(r"```json\n(.*?)\n```", section, flags=re.S)
    assert len(examples) == 3
    read = {}
    for benchmark, example in zip(answer_cli.BENCHMARKS, examples):
        path = tmp_path / f"{benchmark}.txt"
        path.write_text(example + "\n")
        read[benchmark] = answer_cli.read_questions(str(path), benchmark)
    assert [(q["id"], q["turns"]) for q in read["alpaca_eval"]] == [
        (0, ["What is the capital of France?"]),
        (1, ["Write a haiku about autumn."]),
    ]
    assert read["alpaca_eval"][0]["raw"]["dataset"] == "helpful_base"
    assert [(q["id"], q["turns"]) for q in read["arena_hard"]] == [
        ("328c149ed45a41c0", ["Write a Python function that reverses a linked list."])
    ]
    assert [(q["id"], q["category"], len(q["turns"])) for q in read["mt_bench"]] == [
        (81, "writing", 2),
        (111, "math", 2),
    ]
