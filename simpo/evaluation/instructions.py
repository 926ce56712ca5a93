"""EVAL.md: the commands that take a finished run through AlpacaEval 2, Arena-Hard v0.1 and MT-Bench, as the SimPO
paper evaluated (judges and baselines as there), with the set-ups simpo-eval-setup wrote. Paths are relative to the
directory simpo-eval-setup ran in (the commands run from there).

Each harness gets an environment of its own under envs/ (their pins conflict with simpo's and with each other:
fschat[llm_judge] 0.2.36 needs openai < 1, alpaca-eval 0.6.2 openai >= 1.5); simpo-answer runs in simpo's."""

import os
import shlex

from simpo.evaluation.families import MT_BENCH_MAX_NEW_TOKENS, MT_BENCH_TEMPERATURE, decoding

ARENA_HARD_REPO, FASTCHAT_JUDGE = "arena-hard-auto", "FastChat/fastchat/llm_judge"
# arena-hard-auto's last v0.1 commit (2025-03-19; the repository moved to v2.0 in April 2025, with another answer
# format): the gen_answer.py and utils.py simpo-eval-setup's Arena-Hard files were checked against.
ARENA_HARD_COMMIT = "3071ef95d913bb5cd632641db336a3b6c7fe4bdd"
VLLM_PIN = "vllm==0.33.0"  # the `vllm` extra's version (setup.py)
ENVS = "envs"
# One line per harness environment; tests/helpers/harness_envs.py builds these very lines.
INSTALL = {
    "alpaca_eval": f'python3 -m venv {ENVS}/alpaca_eval && {ENVS}/alpaca_eval/bin/pip install "setuptools<81"'
    " alpaca-eval==0.6.2",
    # the judge imports fastchat.model (torch, transformers, psutil): model_worker brings them
    "fastchat": f"python3 -m venv {ENVS}/fastchat && {ENVS}/fastchat/bin/pip install torch==2.13.0"
    ' "fschat[model_worker,llm_judge]==0.2.36"',
    # transformers: gen_answer.py loads the endpoint's `tokenizer` with it, and its requirements do not list it
    "arena_hard": f"python3 -m venv {ENVS}/arena_hard && {ENVS}/arena_hard/bin/pip install -r"
    f" {ARENA_HARD_REPO}/requirements.txt transformers",
    "vllm": f"python3 -m venv {ENVS}/vllm && {ENVS}/vllm/bin/pip install {VLLM_PIN}",
}


def block(*commands: str) -> str:
    return "```bash\n" + "\n".join(commands) + "\n```\n"


def inside(folder: str, path: str) -> str:
    """`path` as seen from `folder` (commands that must run in a tool's checkout)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


def shell_absolute(path: str) -> str:
    """`path` as an absolute path in a shell command run from here: as is when it is absolute, else under $PWD."""
    return shlex.quote(path) if os.path.isabs(path) else f'"$PWD/{path}"'


def alpaca_eval_section(out: str, eval_dir: str, name: str, family: str, context: int | None) -> str:
    d = decoding(family, "alpaca_eval")
    folder, py = os.path.join(eval_dir, "alpaca_eval"), f"{ENVS}/alpaca_eval/bin"
    judge = "--annotators_config weighted_alpaca_eval_gpt4_turbo"
    tokens = min(d.max_new_tokens, context or d.max_new_tokens)
    return (
        f"## AlpacaEval 2 (length-controlled win rate against GPT-4 Turbo)\n\nDecoding: temperature {d.temperature},"
        f" top_p {d.top_p}, at most {tokens} new tokens. Answers with simpo-answer (no vLLM needed), then the judge"
        " (alpaca-eval 0.6.2, the version the reference pins, in an environment of its own; it imports"
        " pkg_resources, which setuptools 81 removed):\n\n"
        + block(
            INSTALL["alpaca_eval"],
            f"hf download tatsu-lab/alpaca_eval alpaca_eval.json --repo-type dataset --local-dir {folder}",
            f"simpo-answer {out} --benchmark alpaca_eval --questions {folder}/alpaca_eval.json",
            f"{py}/alpaca_eval evaluate --model_outputs {folder}/model_outputs.json {judge} --output_path"
            f" {folder}/results",
        )
        + "\nOr alpaca_eval's own vLLM decoding (a GPU, vLLM in alpaca_eval's environment) with the checked prompt"
        " template, as the reference ran it (a text template passes an instruction's surrounding whitespace on,"
        " where a trimming chat template would not):\n\n"
        + block(
            f"{py}/pip install {VLLM_PIN}",
            f"{py}/alpaca_eval evaluate_from_model --model_configs {shell_absolute(os.path.join(folder, name))}"
            f" {judge} --output_path {folder}/results",
        )
    )


def arena_hard_section(
    out: str, served: str, eval_dir: str, name: str, family: str, context: int | None, dtype: str | None
) -> str:
    d = decoding(family, "arena_hard")
    folder, repo = os.path.join(eval_dir, "arena_hard"), ARENA_HARD_REPO
    question_dir = f"{repo}/data/arena-hard-v0.1"
    rel, py = inside(repo, folder), inside(repo, f"{ENVS}/arena_hard/bin/python")
    return (
        f"## Arena-Hard v0.1 (win rate against GPT-4-0314, judged by GPT-4 Turbo)\n\nDecoding: temperature"
        f" {d.temperature} (greedy), at most {d.max_new_tokens} new tokens less the question's own"
        + (f", within the model's {context} positions" if context else "")
        + " (gen_answer.py subtracts a question's tokens, counted with the run's tokenizer, from max_tokens)."
        " arena-hard-auto's v0.1 scripts, at the commit simpo-eval-setup's files were checked against:\n\n"
        + block(
            f"git clone https://github.com/lmarena/arena-hard-auto {repo}",
            f"git -C {repo} checkout {ARENA_HARD_COMMIT}",
            INSTALL["arena_hard"],
            f"simpo-answer {out} --benchmark arena_hard --questions {question_dir}/question.jsonl --out"
            f" {question_dir}/model_answer/{name}.jsonl",
        )
        + "\nOr answers from a vLLM server (a GPU) with the checked chat template and the run's stop tokens"
        " (`--generation-config`: gen_answer.py sends no stop tokens of its own):\n\n"
        + block(
            INSTALL["vllm"],
            f"{ENVS}/vllm/bin/vllm serve {served} --served-model-name {name} --chat-template"
            f" {folder}/chat_template.jinja --generation-config {folder}/generation_config"
            + (f" --dtype {dtype}" if dtype and dtype != "auto" else "")
            + " --port 8000 --api-key token-abc123 &",
            f"(cd {repo} && {py} gen_answer.py --setting-file {rel}/gen_answer_config.yaml --endpoint-file"
            f" {rel}/api_config.yaml)",
        )
        + "\nThen the judgments (arena-hard-auto's judge settings with this model added; OPENAI_API_KEY set):\n\n"
        + block(
            f'{ENVS}/arena_hard/bin/python -c "import yaml;'
            f" c = yaml.safe_load(open('{repo}/config/judge_config.yaml')); c['model_list'] = ['{name}'];"
            f" yaml.safe_dump(c, open('{folder}/judge_config.yaml', 'w'))\"",
            f"(cd {repo} && {py} gen_judgment.py --setting-file {rel}/judge_config.yaml --endpoint-file"
            " config/api_config.yaml)",
            f"(cd {repo} && {py} show_result.py)",
        )
    )


def mt_bench_section(out: str, eval_dir: str, name: str) -> str:
    temperatures = ", ".join(f"{c} {t}" for c, t in MT_BENCH_TEMPERATURE.items())
    data = f"{FASTCHAT_JUDGE}/data/mt_bench"
    judge = "--judge-model gpt-4-1106-preview"
    py = inside(FASTCHAT_JUDGE, f"{ENVS}/fastchat/bin/python")
    return (
        f"## MT-Bench (GPT-4 Turbo as judge, with the reference's GPT-4 Turbo reference answers)\n\nDecoding:"
        f" FastChat's temperature per category ({temperatures}), at most {MT_BENCH_MAX_NEW_TOKENS} new tokens; the"
        " second turn sees the model's first answer. simpo-answer writes FastChat's answer file; FastChat's own"
        " gen_model_answer.py would prompt the model otherwise than training did (fschat 0.2.36 has no Llama-3"
        " conversation template, encodes the prompt with the tokenizer's special tokens after its template wrote"
        " BOS, a doubled BOS, and moves inputs with .cuda()). The judge is fschat 0.2.36's, on the FastChat"
        " checkout's data:\n\n"
        + block(
            "git clone https://github.com/lm-sys/FastChat",
            INSTALL["fastchat"],
            f"simpo-answer {out} --benchmark mt_bench --questions {data}/question.jsonl --out"
            f" {data}/model_answer/{name}.jsonl",
            "curl -L https://raw.githubusercontent.com/princeton-nlp/SimPO/main/eval/mt-bench/"
            f"gpt-4-1106-preview.jsonl -o {data}/reference_answer/gpt-4-1106-preview.jsonl",
            f"(cd {FASTCHAT_JUDGE} && {py} -m fastchat.llm_judge.gen_judgment --model-list {name} {judge}"
            " --parallel 4)",
            f"(cd {FASTCHAT_JUDGE} && {py} -m fastchat.llm_judge.show_result --model-list {name} {judge})",
        )
    )


def eval_md(
    output_dir: str,
    served: str,
    eval_dir: str,
    name: str,
    family: str,
    benchmarks: list[str],
    context: int | None = None,
    dtype: str | None = None,
) -> str:
    out, served, eval_dir = os.path.normpath(output_dir), os.path.normpath(served), os.path.normpath(eval_dir)
    lora = (
        f" It is a LoRA run: vLLM loads `{served}`, its adapter merged into the base model (simpo-answer reads the"
        " adapter itself)."
        if served != out
        else ""
    )
    parts = [
        f"# Evaluating {name}\n\nModel: `{out}` (chat template family: {family}). Written by simpo-eval-setup: the"
        " templates in this folder were checked token by token against what training fed the model"
        " (`parity.json`), and simpo-answer prompts with the training ids themselves. Decoding is the SimPO"
        f" reference's for this family.{lora} Run the commands from the directory simpo-eval-setup ran in, with"
        f" simpo installed; each harness gets an environment of its own under `{ENVS}/`. The judges are OpenAI"
        " models (`export OPENAI_API_KEY=...`).\n"
    ]
    if "alpaca_eval" in benchmarks:
        parts.append(alpaca_eval_section(out, eval_dir, name, family, context))
    if "arena_hard" in benchmarks:
        parts.append(arena_hard_section(out, served, eval_dir, name, family, context, dtype))
    if "mt_bench" in benchmarks:
        parts.append(mt_bench_section(out, eval_dir, name))
    return "\n".join(parts)
