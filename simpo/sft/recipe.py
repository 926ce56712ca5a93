"""The SFT recipe behind scripts/run_sft.py and `simpo-sft`: parse, seed, data, tokenizer, tokens, model and trainer
(TRL's SFTTrainer), train, save, card. The SimPO recipe's parser, mixer, chat-template rules, logging, resume and
launch checks (simpo/run/steps.py); loss on assistant tokens only (simpo/sft/tokenization.py)."""

import functools
import logging
import os

from trl import SFTTrainer

from simpo.config.arguments import DataArguments, ModelArguments
from simpo.data.chat_templates import set_chat_template
from simpo.data.mixer import mix_datasets, require_eval_split
from simpo.data.validation import report_drops
from simpo.models.checks import check_model_settings, check_special_tokens
from simpo.models.loading import get_peft_config, get_tokenizer, model_init_kwargs
from simpo.models.modules import disable_dropout
from simpo.reporting.curves import plot_curves
from simpo.reporting.summary import RunSummary
from simpo.run.commands import exit_process, report_input_errors
from simpo.run.finite import FiniteUpdates
from simpo.run.relaunch import check_data
from simpo.run.resume import checkpoint_state
from simpo.run.steps import (
    evaluate_and_save,
    finish,
    no_training,
    record_run,
    run_callbacks,
    save_final,
    start_run,
    stopped_by_signal,
    train,
)
from simpo.sft.config import SFTRunConfig, cuts_conversations
from simpo.sft.data import CONVERSATIONS
from simpo.sft.reporting import DROPPED_FILE, SFT_PANELS, sft_end_summary, sft_start_summary, throughput
from simpo.sft.tokenization import tokenize_conversations

logger = logging.getLogger("simpo")
SFT_ARGUMENTS = (ModelArguments, DataArguments, SFTRunConfig)
DESCRIPTION = (
    "Supervised fine-tuning (the SFT stage before SimPO for base models) on chat conversations, with the"
    " loss on assistant tokens only, from a YAML config and --key=value overrides."
)


def tokenize_splits(datasets, tokenizer, data_args, args) -> tuple[dict, dict, dict]:
    """{"train": ..., "test": ...} of input_ids/labels, each side's DroppedRow records and its token counts."""
    out, drops, counts = {}, {}, {}
    packed = {"train": args.packing, "test": args.packing if args.eval_packing is None else args.eval_packing}
    with args.main_process_first(desc="tokenizing conversations"):
        for side in ("train", "test"):
            if side in datasets:
                max_length = args.max_length if cuts_conversations(args, packed[side]) else None
                out[side], drops[side], counts[side] = tokenize_conversations(
                    datasets[side],
                    tokenizer,
                    max_length,
                    f"{side}_dataset",
                    data_args.auto_insert_empty_system_msg,
                    data_args.preprocessing_num_workers,
                    args.on_degenerate_rows,
                    data_args.allow_special_tokens_in_text,
                )
    return out, drops, counts


def sft_model_init_kwargs(model_args, args) -> dict:
    """The SimPO recipe's from_pretrained kwargs, with from_pretrained's own defaults where TRL would change them:
    the checkpoint's dtype (TRL: float32), and no device_map unless quantised (TRL: "auto" on GPUs outside DDP and
    DeepSpeed, which would spread one process's model over every GPU, e.g. under FSDP)."""
    return {"dtype": "auto", "device_map": None, **model_init_kwargs(model_args, args)}


@report_input_errors("simpo-sft")
def main() -> None:
    """`simpo-sft` and scripts/run_sft.py: the recipe, then the process's exit (exit_process)."""
    exit_process(sft_main())


def sft_main(argv: list[str] | None = None, callbacks: list | None = None) -> int:
    """Run the recipe; `callbacks` (TrainerCallback instances) are added to the trainer's, e.g. for probes."""
    launch = start_run(argv, SFT_ARGUMENTS, "simpo-sft", DESCRIPTION)
    model_args, data_args, args, checkpoint = launch.model_args, launch.data_args, launch.args, launch.checkpoint

    raw_datasets = mix_datasets(
        data_args.dataset_mixer,
        data_args.dataset_splits,
        data_args.dataset_configs,
        seed=args.seed,
        row_format=CONVERSATIONS,
    )
    require_eval_split(args, raw_datasets, example="test_sft")
    if check_data(launch, raw_datasets):  # the relaunch of a finished run: nothing to train, before the model loads
        return 0
    check_model_settings(model_args, args)  # LoRA names, context, bitsandbytes: from the config alone
    tokenizer = get_tokenizer(model_args)
    check_special_tokens(tokenizer, model_args)
    set_chat_template(tokenizer, data_args.chat_template, model_args.model_name_or_path)
    tokenized, drops, counts = tokenize_splits(raw_datasets, tokenizer, data_args, args)

    args.model_init_kwargs = sft_model_init_kwargs(model_args, args)
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("test"),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args, args),
        # FiniteUpdates after the stop on a signal (the first of run_callbacks): it may ask for a save
        callbacks=[*run_callbacks(launch), FiniteUpdates(), *(callbacks or [])],
    )
    trainer.add_callback(
        RunSummary(functools.partial(sft_start_summary, trainer, counts, drops, resume_note=launch.resume_note))
    )
    if args.disable_dropout:
        disable_dropout(trainer.model)
    record_run(launch)
    if trainer.accelerator.is_main_process:
        report_drops(
            drops["train"] + drops.get("test", []), args.output_dir, noun="conversations", file_name=DROPPED_FILE
        )

    if no_training(trainer):
        return finish(trainer, launch)

    train_result = train(trainer, launch)
    if (code := stopped_by_signal(trainer, launch)) is not None:
        return code
    resumed = checkpoint_state(checkpoint)
    metrics = {
        **train_result.metrics,
        **throughput(trainer, train_result.metrics, resumed),
        "train_samples": len(tokenized["train"]),
    }
    card = {
        "model_name": os.path.basename(os.path.normpath(args.output_dir)),
        "dataset_name": ", ".join(data_args.dataset_mixer),
        "tags": ["simpo", "sft"],
    }
    save_final(trainer, launch, metrics, card)  # with the tokenizer and its chat template: the SimPO stage reads both
    if (code := stopped_by_signal(trainer, launch, final_saved=True)) is not None:
        return code

    if args.do_eval and "test" in tokenized:
        evaluate_and_save(trainer)

    plot_curves(trainer, SFT_PANELS, "SFT")  # output_dir/training_curves.png, main process; a failure only warns
    if args.push_to_hub:
        trainer.push_to_hub(tags=["simpo", "sft"])
    logger.info("Training finished; outputs are in %s", args.output_dir)
    if trainer.accelerator.is_main_process:
        print(sft_end_summary(trainer, metrics, resumed_at=launch.resumed_at), flush=True)
    return finish(trainer, launch)
