"""`simpo-eval-setup OUTPUT_DIR [--benchmarks alpaca_eval,arena_hard,mt_bench]`: ready-to-run evaluation set-ups
for a finished run, in OUTPUT_DIR/eval/:

  alpaca_eval/NAME/configs.yaml, prompt.txt   a model config for alpaca_eval's vLLM decoding, with its prompt template
  arena_hard/gen_answer_config.yaml, api_config.yaml, chat_template.jinja, generation_config/
                                              arena-hard-auto's answer settings and endpoint, and for the `vllm serve`
                                              it talks to: the chat template and the stop tokens (--generation-config)
  model/                                      a LoRA run's adapter merged into its base model (vLLM loads full weights)
  EVAL.md                                     the exact commands, also for simpo-answer (no vLLM needed; MT-Bench)
  parity.json                                 what the token-parity check compared

Everything comes from the run: its saved tokenizer with the chat template training applied and its system-turn rule
(run_config.yaml), its stop tokens (the generation_config's EOS ids and the token the template ends an assistant turn
with), its context length (no benchmark asks for more new tokens than the model has positions), the reference's
decoding settings for the template's family.
Each template is checked token by token against what training fed the model (simpo.evaluation.templates); if one
differs, nothing is written and the first differing token is shown. `--alpaca-prompt-template` / `--chat-template` check
and use your own files instead (e.g. the reference's).
"""

import json
import os
import sys

import yaml
from transformers import GenerationConfig

from simpo.config.parser import CommandParser
from simpo.config.run_record import run_folder_problem, run_settings
from simpo.data.tokenization import generation_prompt_ids
from simpo.errors import ParityError
from simpo.evaluation.answer import context_length
from simpo.evaluation.families import decoding, family_of
from simpo.evaluation.instructions import eval_md
from simpo.evaluation.templates import (
    ALPACA_EVAL_CONVERSATIONS,
    PARITY_CONVERSATIONS,
    PARITY_PROMPTS,
    alpaca_eval_ids,
    alpaca_eval_template,
    check_parity,
    vllm_chat_ids,
    vllm_chat_template,
)
from simpo.models.loading import training_tokenizer
from simpo.pipeline.backends import full_weights, model_stop_ids
from simpo.pipeline.work_units import write_atomic
from simpo.run.commands import report_input_errors

BENCHMARKS = ("alpaca_eval", "arena_hard", "mt_bench")
SERVER = {"api_base": "http://localhost:8000/v1", "api_key": "token-abc123"}


def stop_token_ids(output_dir: str, tokenizer) -> list[int]:
    """The run's EOS ids and its template's end-of-turn token: what simpo-answer and simpo-generate stop at."""
    return model_stop_ids(output_dir, tokenizer)


def read(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path) as f:
        return f.read()


def new_tokens(setting, context: int | None) -> int:
    """The family's max_new_tokens, at most the model's positions: vLLM refuses a request for more new tokens than
    the model has positions (and, given fewer, caps each at what its prompt leaves)."""
    return min(setting.max_new_tokens, context or setting.max_new_tokens)


ARENA_HARD_RESERVE = 300  # arena-hard-auto's gen_answer.py: max_tokens - a question's tokens - 300 per answer
BOUNDARY_MARGIN = 16  # tokens a question may gain from the template around it (merges across the boundary)


def arena_hard_budget(setting, context: int | None, tokenizer, auto_insert: bool) -> int:
    """gen_answer_config.yaml's max_tokens. With a `tokenizer` key in the endpoint, gen_answer.py asks for
    max_tokens - len(tokenizer(question)) - 300 new tokens per question, and vLLM refuses a request whose prompt and
    max_tokens together pass the model's positions. So: the family's new tokens plus those 300, and at most the
    context plus 300 minus what the chat template adds to a question (the most over the parity prompts, and a
    margin): every answer gets the family's tokens less the question's, and never more than the context leaves."""
    if context is None:
        return setting.max_new_tokens + ARENA_HARD_RESERVE
    added = max(
        len(generation_prompt_ids([{"role": "user", "content": text}], tokenizer, auto_insert))
        - len(tokenizer(text)["input_ids"])
        for text in PARITY_PROMPTS
    )
    return min(setting.max_new_tokens, context - added - BOUNDARY_MARGIN) + ARENA_HARD_RESERVE


def alpaca_eval_config(name: str, folder: str, model: str, setting, context, stops, trust_remote_code) -> dict:
    """A model config as alpaca_eval 0.6.2 reads it: `evaluate_from_model` loads it with utils.load_configs, reads
    the prompt template file, and calls decoders.vllm_local_completions(prompts, **completions_kwargs), which builds
    `LLM(model=model_name, tokenizer=model_name, ...)` from model_kwargs (it reads tp, tokenizer_mode and
    trust_remote_code, and needs the dict) and passes the other keywords to SamplingParams. No do_sample: true there
    turns on beam search (which vLLM no longer has); temperature alone decides greedy or sampling."""
    return {
        name: {
            "prompt_template": os.path.abspath(os.path.join(folder, "prompt.txt")),
            "fn_completions": "vllm_local_completions",
            "completions_kwargs": {
                "model_name": os.path.abspath(model),
                "model_kwargs": {"trust_remote_code": trust_remote_code},
                "max_new_tokens": new_tokens(setting, context),
                "temperature": setting.temperature,
                "top_p": setting.top_p,
                "stop_token_ids": stops,
                "batch_size": 900,
            },
            "pretty_name": name,
        }
    }


def setup(
    output_dir: str,
    benchmarks: list[str],
    name: str,
    eval_dir: str,
    alpaca_template: str | None = None,
    chat_template: str | None = None,
) -> dict:
    """Check every template, then write the set-ups; returns what parity.json records. Raises ParityError."""
    model_args, data_args = run_settings(output_dir)
    tokenizer = training_tokenizer(output_dir, model_args, data_args)
    auto_insert = data_args.auto_insert_empty_system_msg
    family = family_of(tokenizer.chat_template)
    context = context_length(output_dir, model_args.trust_remote_code)
    stops = stop_token_ids(output_dir, tokenizer)
    files, parity = {}, {}
    wants = lambda benchmark, own, make: (own or make(tokenizer, auto_insert)) if benchmark in benchmarks else None
    template = wants("alpaca_eval", alpaca_template, alpaca_eval_template)
    chat = wants("arena_hard", chat_template, vllm_chat_template)
    checks = {  # benchmark: (what is checked, the ids its tool gives, the conversations)
        "alpaca_eval": (
            "alpaca_eval prompt template",
            lambda t: alpaca_eval_ids(template, t, tokenizer),
            ALPACA_EVAL_CONVERSATIONS,
        ),
        "arena_hard": (
            "vLLM chat template (Arena-Hard)",
            lambda t: vllm_chat_ids(chat, t, tokenizer),
            PARITY_CONVERSATIONS,
        ),
    }
    checked = [b for b in checks if b in benchmarks]
    tokens = {b: check_parity(*checks[b], tokenizer, auto_insert) for b in checked}  # all before anything is written
    # vLLM loads full weights: a LoRA run's adapter merged into its base model (simpo-answer needs none).
    served = full_weights(output_dir, model_args.torch_dtype, model_args.trust_remote_code) if checked else output_dir
    if "alpaca_eval" in benchmarks:
        parity["alpaca_eval"] = {"prompts": len(ALPACA_EVAL_CONVERSATIONS), "tokens": tokens["alpaca_eval"]}
        folder = os.path.join(eval_dir, "alpaca_eval", name)
        files[os.path.join(folder, "prompt.txt")] = template
        config = alpaca_eval_config(
            name, folder, served, decoding(family, "alpaca_eval"), context, stops, model_args.trust_remote_code
        )
        files[os.path.join(folder, "configs.yaml")] = yaml.safe_dump(config, sort_keys=False)
    if "arena_hard" in benchmarks:
        parity["arena_hard"] = {"prompts": len(PARITY_CONVERSATIONS), "tokens": tokens["arena_hard"]}
        setting = decoding(family, "arena_hard")
        folder = os.path.join(eval_dir, "arena_hard")
        files[os.path.join(folder, "chat_template.jinja")] = chat
        # arena-hard-auto's gen_answer.py sends temperature and max_tokens only; the server's generation config
        # (`vllm serve --generation-config` this folder) gives the stop tokens, and no sampling defaults of its own.
        files[os.path.join(folder, "generation_config", "generation_config.json")] = GenerationConfig(
            eos_token_id=stops
        ).to_json_string(use_diff=True)
        files[os.path.join(folder, "gen_answer_config.yaml")] = yaml.safe_dump(
            {
                "bench_name": "arena-hard-v0.1",
                "temperature": setting.temperature,
                "max_tokens": arena_hard_budget(setting, context, tokenizer, auto_insert),
                "num_choices": 1,
                "model_list": [name],
            },
            sort_keys=False,
        )
        endpoint = {"model_name": name, "endpoints": [SERVER], "api_type": "openai", "parallel": 8}
        # the run's tokenizer: gen_answer.py subtracts each question's tokens from max_tokens
        endpoint["tokenizer"] = os.path.abspath(output_dir)
        files[os.path.join(folder, "api_config.yaml")] = yaml.safe_dump({name: endpoint}, sort_keys=False)
    if "mt_bench" in benchmarks:
        parity["mt_bench"] = {"prompts": 0, "tokens": 0, "note": "simpo-answer prompts with the training ids"}
    summary = {
        "model": output_dir,
        "served_model": served,
        "name": name,
        "family": family,
        "auto_insert_empty_system_msg": auto_insert,
        "benchmarks": benchmarks,
        "parity": parity,
    }
    files[os.path.join(eval_dir, "parity.json")] = json.dumps(summary, indent=1)
    files[os.path.join(eval_dir, "EVAL.md")] = eval_md(
        output_dir, served, eval_dir, name, family, benchmarks, context, model_args.torch_dtype
    )
    for path, text in files.items():
        write_atomic(path, text)
    return summary


@report_input_errors("simpo-eval-setup")
def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(
        "simpo-eval-setup",
        "Write ready-to-run AlpacaEval 2, Arena-Hard and MT-Bench set-ups for"
        " a finished run, each template checked against what training fed the model.",
        description=__doc__,
    )
    parser.add_argument("output_dir", help="a finished run's output_dir")
    parser.add_argument(
        "--benchmarks", default=",".join(BENCHMARKS), help="comma-separated, from " + ", ".join(BENCHMARKS)
    )
    parser.add_argument("--name", help="the model's name in the benchmarks (default: the folder's name)")
    parser.add_argument("--eval-dir", help="where to write (default: OUTPUT_DIR/eval)")
    parser.add_argument("--alpaca-prompt-template", help="check and use this AlpacaEval prompt template instead")
    parser.add_argument("--chat-template", help="check and use this vLLM chat template (Arena-Hard) instead")
    args = parser.parse_args(argv)
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = sorted(set(benchmarks) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}: choose from {', '.join(BENCHMARKS)}")
    problem = run_folder_problem(args.output_dir)
    if problem:
        parser.error(problem)
    name = args.name or os.path.basename(os.path.normpath(args.output_dir))
    eval_dir = args.eval_dir or os.path.join(args.output_dir, "eval")
    try:
        summary = setup(
            args.output_dir, benchmarks, name, eval_dir, read(args.alpaca_prompt_template), read(args.chat_template)
        )
    except ParityError as error:
        print(f"simpo-eval-setup: refused, nothing written.\n{error}", file=sys.stderr)
        raise SystemExit(1) from None
    checked = ", ".join(
        f"{b} {p['prompts']} prompts / {p['tokens']} tokens" for b, p in summary["parity"].items() if p["prompts"]
    )
    print(
        f"Evaluation set-ups for {name} ({summary['family']} template) in {eval_dir}; token parity with training"
        f" checked: {checked}. Commands: {os.path.join(eval_dir, 'EVAL.md')}"
    )


if __name__ == "__main__":
    main()
