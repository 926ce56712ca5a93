"""EVAL.md: the commands that take a finished run through AlpacaEval 2, Arena-Hard v0.1 and MT-Bench, as the SimPO
paper evaluated (judges and baselines as there), with the set-ups simpo-eval-setup wrote. Paths are relative to the
directory simpo-eval-setup ran in (the commands run from there)."""

import os

from simpo.evaluation.families import MT_BENCH_MAX_NEW_TOKENS, MT_BENCH_TEMPERATURE, decoding

ARENA_HARD_REPO, FASTCHAT_JUDGE = "arena-hard-auto", "FastChat/fastchat/llm_judge"


def block(*commands: str) -> str:
    return "```bash\n" + "\n".join(commands) + "\n```\n"


def inside(folder: str, path: str) -> str:
    """`path` as seen from `folder` (commands that must run in a tool's checkout)."""
    return os.path.relpath(os.path.abspath(path), os.path.abspath(folder))


def alpaca_eval_section(out: str, eval_dir: str, name: str, family: str) -> str:
    d = decoding(family, "alpaca_eval")
    folder = os.path.join(eval_dir, "alpaca_eval")
    judge = "--annotators_config weighted_alpaca_eval_gpt4_turbo"
    return (
        f"## AlpacaEval 2 (length-controlled win rate against GPT-4 Turbo)\n\nDecoding: temperature {d.temperature},"
        f" top_p {d.top_p}, at most {d.max_new_tokens} new tokens. Answers with simpo-answer (no vLLM needed), then"
        " the judge (alpaca-eval 0.6.2, the version the reference pins):\n\n"
        + block(
            "pip install alpaca-eval==0.6.2",
            f"hf download tatsu-lab/alpaca_eval alpaca_eval.json --repo-type dataset --local-dir {folder}",
            f"simpo-answer {out} --benchmark alpaca_eval --questions {folder}/alpaca_eval.json",
            f"alpaca_eval evaluate --model_outputs {folder}/model_outputs.json {judge} --output_path {folder}/results",
        )
        + "\nOr alpaca_eval's own vLLM decoding with the checked prompt template (as the reference ran it; a text"
        " template passes an instruction's surrounding whitespace on, where a trimming chat template would not):\n\n"
        + block(
            f'alpaca_eval evaluate_from_model --model_configs "$PWD/{folder}/{name}" {judge} --output_path'
            f" {folder}/results"
        )
    )


def arena_hard_section(out: str, eval_dir: str, name: str, family: str) -> str:
    d = decoding(family, "arena_hard")
    folder, repo = os.path.join(eval_dir, "arena_hard"), ARENA_HARD_REPO
    question_dir = f"{repo}/data/arena-hard-v0.1"
    rel = inside(repo, folder)
    return (
        f"## Arena-Hard v0.1 (win rate against GPT-4-0314, judged by GPT-4 Turbo)\n\nDecoding: temperature"
        f" {d.temperature} (greedy), at most {d.max_new_tokens} new tokens. arena-hard-auto's v0.1 scripts (the"
        " repository moved to v2.0 in April 2025, with another answer format):\n\n"
        + block(
            f"git clone https://github.com/lmarena/arena-hard-auto {repo}",
            f"git -C {repo} checkout $(git -C {repo} rev-list -n 1 --before=2025-04-01 HEAD)",
            f"pip install -r {repo}/requirements.txt",
            f"simpo-answer {out} --benchmark arena_hard --questions {question_dir}/question.jsonl --out"
            f" {question_dir}/model_answer/{name}.jsonl",
        )
        + "\nOr answers from a vLLM server with the checked chat template:\n\n"
        + block(
            f"vllm serve {out} --served-model-name {name} --chat-template {folder}/chat_template.jinja --port"
            " 8000 --api-key token-abc123 &",
            f"(cd {repo} && python gen_answer.py --setting-file {rel}/gen_answer_config.yaml --endpoint-file"
            f" {rel}/api_config.yaml)",
        )
        + "\nThen the judgments (arena-hard-auto's judge settings with this model added; OPENAI_API_KEY set):\n\n"
        + block(
            f"python -c \"import yaml; c = yaml.safe_load(open('{repo}/config/judge_config.yaml'));"
            f" c['model_list'] = ['{name}']; yaml.safe_dump(c, open('{folder}/judge_config.yaml', 'w'))\"",
            f"(cd {repo} && python gen_judgment.py --setting-file {rel}/judge_config.yaml --endpoint-file"
            " config/api_config.yaml)",
            f"(cd {repo} && python show_result.py)",
        )
    )


def mt_bench_section(out: str, eval_dir: str, name: str) -> str:
    temperatures = ", ".join(f"{c} {t}" for c, t in MT_BENCH_TEMPERATURE.items())
    data = f"{FASTCHAT_JUDGE}/data/mt_bench"
    judge = "--judge-model gpt-4-1106-preview"
    return (
        f"## MT-Bench (GPT-4 Turbo as judge, with the reference's GPT-4 Turbo reference answers)\n\nDecoding:"
        f" FastChat's temperature per category ({temperatures}), at most {MT_BENCH_MAX_NEW_TOKENS} new tokens; the"
        " second turn sees the model's first answer. simpo-answer writes FastChat's answer file:\n\n"
        + block(
            'git clone https://github.com/lm-sys/FastChat && pip install -e "FastChat[model_worker,llm_judge]"',
            f"simpo-answer {out} --benchmark mt_bench --questions {data}/question.jsonl --out"
            f" {data}/model_answer/{name}.jsonl",
            "curl -L https://raw.githubusercontent.com/princeton-nlp/SimPO/main/eval/mt-bench/"
            f"gpt-4-1106-preview.jsonl -o {data}/reference_answer/gpt-4-1106-preview.jsonl",
            f"(cd {FASTCHAT_JUDGE} && python gen_judgment.py --model-list {name} {judge} --parallel 4)",
            f"(cd {FASTCHAT_JUDGE} && python show_result.py --model-list {name} {judge})",
        )
    )


def eval_md(output_dir: str, eval_dir: str, name: str, family: str, benchmarks: list[str]) -> str:
    out, eval_dir = os.path.normpath(output_dir), os.path.normpath(eval_dir)
    parts = [
        f"# Evaluating {name}\n\nModel: `{out}` (chat template family: {family}). Written by simpo-eval-setup: the"
        " templates in this folder were checked token by token against what training fed the model"
        " (`parity.json`), and simpo-answer prompts with the training ids themselves. Decoding is the SimPO"
        " reference's for this family. Run the commands from the directory simpo-eval-setup ran in; the judges are"
        " OpenAI models (`export OPENAI_API_KEY=...`).\n"
    ]
    if "alpaca_eval" in benchmarks:
        parts.append(alpaca_eval_section(out, eval_dir, name, family))
    if "arena_hard" in benchmarks:
        parts.append(arena_hard_section(out, eval_dir, name, family))
    if "mt_bench" in benchmarks:
        parts.append(mt_bench_section(out, eval_dir, name))
    return "\n".join(parts)
