"""`simpo-generate PIPELINE.yaml [--key=value ...]`: K samples per prompt from the policy, one per seed, resumable and
data-parallel under `accelerate launch`.

Writes OUTPUT_DIR/generations/<side>.jsonl (side: train, test), one row per prompt: {"prompt": the prompt cell as
the source stores it, "messages": its turns, "responses": one reply per seed, in the order of `seeds`}.
Work in progress lives in OUTPUT_DIR/generations/units/ (one file per batch and seed); relaunching the same command
continues from there.
"""

import logging
import os

from simpo.data.chat_templates import set_chat_template
from simpo.data.tokenization import generation_prompt_ids
from simpo.models.loading import get_tokenizer
from simpo.pipeline.backends import EngineOptions, backend_name, engine_options, make_backend
from simpo.pipeline.config import parse_pipeline_args
from simpo.pipeline.prompts import load_prompts
from simpo.pipeline.work_units import (
    Unit,
    UnitStore,
    check_settings,
    derived_seed,
    fingerprint,
    process_rank,
    run_units,
    weights_fingerprint,
    write_jsonl,
)
from simpo.reporting.logs import setup_logging
from simpo.run.commands import report_input_errors
from simpo.run.folder_lock import lock_folder

logger = logging.getLogger("simpo")
DESCRIPTION = (
    "Sample replies from the policy for every prompt, one per seed (on-policy data, step 1 of 3),"
    " resumable and data-parallel."
)


def plan_units(prompt_ids: dict[str, list[list[int]]], seeds: list[int], batch_size: int) -> list[Unit]:
    """Per side, prompts ordered by length (less padding) cut into fixed batches; one unit per batch and seed."""
    units = []
    for side, ids in prompt_ids.items():
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = [tuple(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
        for seed in seeds:
            units += [Unit(f"{side}/seed{seed}/{b:06d}", side, rows, seed) for b, rows in enumerate(batches)]
    return units


def sample_units(
    folder: str,
    prompt_ids: dict[str, list[list[int]]],
    seeds: list[int],
    batch_size: int,
    settings: dict,
    make,
    everyone_waits: bool = False,
) -> dict[str, list[list[str]]] | None:
    """Sample every (prompt, seed) of `prompt_ids` into `folder`; on the main process (on all with
    `everyone_waits`), once all are done, {side: [[one response per seed] per prompt]}; None on the other processes.
    `make()` builds the backend (only when there is work left)."""
    store = UnitStore(os.path.join(folder, "units"))
    check_settings(folder, settings)
    units = plan_units(prompt_ids, seeds, batch_size)
    backend = None

    def work(unit: Unit) -> list:
        nonlocal backend
        backend = backend or make()
        prompts = [prompt_ids[unit.split][row] for row in unit.rows]
        batch_seed = derived_seed(unit.seed, unit.name)
        row_seeds = [derived_seed(unit.seed, unit.split, row) for row in unit.rows]
        return [
            {"row": row, "response": text}
            for row, text in zip(unit.rows, backend.generate(prompts, batch_seed, row_seeds))
        ]

    if not run_units(units, store, work, desc="generating", everyone_waits=everyone_waits):
        return None
    responses = {side: [[None] * len(seeds) for _ in ids] for side, ids in prompt_ids.items()}
    for unit in units:
        for record in store.read(unit):
            responses[unit.split][record["row"]][seeds.index(unit.seed)] = record["response"]
    return responses


def engine_of(args) -> EngineOptions:
    """The vLLM engine options of a pipeline config (its vllm_* keys), checked against its backend."""
    options = EngineOptions(
        gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        max_model_len=args.vllm_max_model_len,
        enforce_eager=args.vllm_enforce_eager,
        tensor_parallel_size=args.vllm_tensor_parallel_size,
    )
    return engine_options(args.backend, options)


@report_input_errors("simpo-generate")
def main(argv: list[str] | None = None) -> None:
    model_args, data_args, args = parse_pipeline_args(argv, "simpo-generate", DESCRIPTION)
    rank, world = process_rank()
    setup_logging(rank == 0)
    engine = engine_of(args)  # before anything loads
    tokenizer = get_tokenizer(model_args)  # the inputs are read before the lock: a run refused writes nothing
    set_chat_template(tokenizer, data_args.chat_template, model_args.model_name_or_path)
    sides = load_prompts(
        data_args.dataset_mixer,
        data_args.dataset_splits,
        data_args.dataset_configs,
        args.prompt_column,
        args.keep_columns,
    )
    prompt_ids = {
        side: [
            generation_prompt_ids(row["messages"], tokenizer, data_args.auto_insert_empty_system_msg) for row in rows
        ]
        for side, rows in sides.items()
    }
    settings = {
        "model": [
            model_args.model_name_or_path,
            model_args.model_revision,
            model_args.torch_dtype,
            weights_fingerprint(model_args.model_name_or_path),
        ],
        "backend": backend_name(args.backend),
        "seeds": args.seeds,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "generation_batch_size": args.generation_batch_size,
        "prompt_ids": {side: fingerprint(ids) for side, ids in prompt_ids.items()},
    }
    logger.info(
        "%s prompts x %d seeds, %d process(es)",
        " + ".join(f"{len(rows)} {side}" for side, rows in sides.items()),
        len(args.seeds),
        world,
    )
    if rank == 0:
        lock_folder(args.output_dir, "simpo-generate")
    folder = os.path.join(args.output_dir, "generations")
    make = lambda: make_backend(
        args.backend, model_args, tokenizer, args.temperature, args.top_p, args.max_tokens, engine
    )
    responses = sample_units(folder, prompt_ids, args.seeds, args.generation_batch_size, settings, make)
    if responses is None:
        return
    for side, rows in sides.items():
        out = [{**row, "responses": replies} for row, replies in zip(rows, responses[side])]
        write_jsonl(os.path.join(folder, f"{side}.jsonl"), out)
        empty = sum(not reply for replies in responses[side] for reply in replies)
        logger.info(
            "%s: %d prompts x %d responses (%d empty) in %s",
            side,
            len(out),
            len(args.seeds),
            empty,
            os.path.join(folder, f"{side}.jsonl"),
        )


if __name__ == "__main__":
    main()
