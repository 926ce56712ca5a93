"""SimPOTrainer: a transformers.Trainer whose loss is SimPO's. It overrides compute_loss, prediction_step and log."""

import logging
from collections import defaultdict

import torch
from torch import nn
from transformers import AutoModelForCausalLM, Trainer

from simpo.collator import PairCollator
from simpo.config import SimPOConfig
from simpo.launch_checks import check_distributed_setup
from simpo.logps import fused_token_logps, plain_token_logps
from simpo.loss import average_logps, preference_metrics, sft_nll, simpo_loss
from simpo.model import resolve_dtype, unwrap_model
from simpo.prefix_sharing import SharedPrefixCollator, prefix_sharing_problem
from simpo.reporting import RunSummary, TokenThroughput, global_batch_size
from simpo.samples import EvalSamples
from simpo.tokenization import tokenize_row
from simpo.validation import handle_drops, without_rows

logger = logging.getLogger(__name__)


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def load_model(model_id: str, args: SimPOConfig) -> nn.Module:
    kwargs = dict(args.model_init_kwargs or {})
    if "dtype" in kwargs:
        kwargs["dtype"] = resolve_dtype(kwargs["dtype"])
    return AutoModelForCausalLM.from_pretrained(model_id, **kwargs)


def wrap_peft(model: nn.Module, peft_config, args: SimPOConfig) -> nn.Module:
    from peft import get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=args.activation_checkpointing,
            gradient_checkpointing_kwargs=args.activation_checkpointing_kwargs,
        )
    elif args.activation_checkpointing:
        # Frozen embeddings give checkpointed blocks inputs without grad; make them require it.
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config)


def uses_prefix_sharing(model: nn.Module, args: SimPOConfig) -> bool:
    """prefix_sharing true must be exact for this model or raise; auto turns it on exactly when it is."""
    if args.prefix_sharing is False:
        return False
    problem = prefix_sharing_problem(unwrap_model(model).config)
    if problem is None:
        return True
    if args.prefix_sharing == "auto" and not args.padding_free:
        logger.info("prefix_sharing=auto: using the plain layout. %s", problem)
        return False
    raise ValueError(problem)


def default_collator(pad_token_id: int, args: SimPOConfig, model: nn.Module):
    if uses_prefix_sharing(model, args):
        return SharedPrefixCollator(pad_token_id, args.label_pad_token_id, padding_free=args.padding_free)
    return PairCollator(pad_token_id, args.label_pad_token_id)


def tokenize_and_check(row: dict, label_pad_token_id: int, **kwargs) -> dict:
    out = tokenize_row(row, label_pad_token_id=label_pad_token_id, **kwargs)
    scored = lambda labels: any(t != label_pad_token_id for t in labels[1:])
    if not (scored(out["chosen_labels"]) and scored(out["rejected_labels"])):
        out["drop_reason"] = "response truncated to no tokens"
    elif out["chosen_input_ids"] == out["rejected_input_ids"]:
        out["drop_reason"] = "identical chosen and rejected responses"
    else:
        out["drop_reason"] = ""
    return out


class SimPOTrainer(Trainer):
    # compute_loss returns a per-batch mean, so the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | str,
        args: SimPOConfig,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        data_collator=None,
        **kwargs,
    ):
        if isinstance(model, str):
            model = load_model(model, args)
        if peft_config is not None:
            model = wrap_peft(model, peft_config, args)
        if args.disable_dropout:
            disable_dropout(model)
        pad_token_id = args.padding_value if args.padding_value is not None else processing_class.pad_token_id
        self.dropped_pairs = []  # drop records of pairs that cannot be trained on, see tokenize
        with args.main_process_first(desc="tokenizing preference pairs"):
            train_dataset = self.tokenize(train_dataset, processing_class, args, "train")
            eval_dataset = self.tokenize(eval_dataset, processing_class, args, "eval")
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or default_collator(pad_token_id, args, model),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        check_distributed_setup(self.accelerator, args)  # launches accelerate silently degraded: refuse
        self._stored_metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.throughput = TokenThroughput()
        self.add_callback(RunSummary(self))
        if args.generate_during_eval:
            self.add_callback(EvalSamples(self))  # after the report_to callbacks, which set up on_train_begin first

    def tokenize(self, dataset, tokenizer, args: SimPOConfig, split: str):
        """Token ids and labels per pair; pairs left with no response token to score, or with identical responses,
        are dropped (recorded in self.dropped_pairs) or raise, per args.on_degenerate_pairs."""
        if dataset is None:
            return None
        kwargs = dict(
            tokenizer=tokenizer,
            max_length=args.max_length,
            max_prompt_length=args.max_prompt_length,
            truncation_mode=args.truncation_mode,
            label_pad_token_id=args.label_pad_token_id,
        )
        dataset = dataset.map(
            tokenize_and_check, fn_kwargs=kwargs, num_proc=args.dataset_num_proc, remove_columns=dataset.column_names
        )
        drops = [
            {"source": "tokenized", "split": split, "row": i, "reason": reason}
            for i, reason in enumerate(dataset["drop_reason"])
            if reason
        ]
        handle_drops(drops, args.on_degenerate_pairs)
        self.dropped_pairs += drops
        return without_rows(dataset, drops).remove_columns("drop_reason")

    def batch_loss_and_metrics(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        args = self.args
        num_seqs = batch["response_lengths"].numel()
        num_pairs = num_seqs // 2
        token_logps, token_logit_means = (fused_token_logps if args.fused_logps else plain_token_logps)(model, batch)
        avg_logps = average_logps(token_logps, batch["score_seq"], num_seqs)
        chosen, rejected = avg_logps[:num_pairs], avg_logps[num_pairs:]
        losses = simpo_loss(chosen, rejected, args.beta, args.gamma_beta_ratio, args.loss_type, args.label_smoothing)
        sft_loss = sft_nll(token_logps, batch["score_seq"], num_pairs)
        loss = losses.mean() + args.sft_weight * sft_loss if args.sft_weight > 0 else losses.mean()
        if not torch.isfinite(loss):
            # Stop here: one NaN step poisons every weight it touches.
            phase = "training" if model.training else "evaluation"
            raise FloatingPointError(
                f"Non-finite SimPO loss ({loss.item()}) in {phase} at step {self.state.global_step + 1}: per-pair"
                f" losses {losses.tolist()}, response lengths {batch['response_lengths'].tolist()}. Lower the"
                " learning rate, check the data, or resume from the last checkpoint."
            )

        metrics = preference_metrics(chosen, rejected, args.beta, args.gamma_beta_ratio)
        mean_logits = average_logps(token_logit_means, batch["score_seq"], num_seqs)
        metrics["logits/chosen"], metrics["logits/rejected"] = mean_logits[:num_pairs], mean_logits[num_pairs:]
        metrics["sft_loss"] = sft_loss.detach()
        lengths = batch["response_lengths"].float()
        metrics["lengths/chosen"], metrics["lengths/rejected"] = lengths[:num_pairs], lengths[num_pairs:]
        # attention_mask is the 2D [R, L] real-token mask in every layout (prefix sharing builds its 4D mask later).
        metrics["tokens/padding_share"] = 1 - batch["attention_mask"].sum() / batch["attention_mask"].numel()
        return loss, metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.throughput.add(inputs)
        loss, metrics = self.batch_loss_and_metrics(model, inputs)
        self.store_metrics(metrics, "train")
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, metrics = self.batch_loss_and_metrics(model, inputs)
        self.store_metrics(metrics, "eval")
        return loss.detach(), None, None

    def store_metrics(self, metrics: dict, split: str) -> None:
        """Keep each metric's batch mean weighted by the batch's pairs, summed over processes: log() then averages
        over pairs, so a short last batch counts for its pairs, not as much as a full one."""
        names = list(metrics)
        pairs = torch.tensor(float(metrics["rewards/chosen"].numel()), device=metrics["rewards/chosen"].device)
        values = torch.stack([metrics[name].float().mean() * pairs for name in names] + [pairs])
        values = self.accelerator.reduce(values, reduction="sum").tolist()
        for name, value in zip(names, values):
            self._stored_metrics[split][name].append((value, values[-1]))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            split, prefix = "train", ""
        else:
            # Evaluation logs carry "<prefix>loss"; the end-of-training summary's "train_loss" is not one.
            eval_loss = next((k for k in logs if k.endswith("_loss") and not k.startswith("train")), None)
            split, prefix = ("eval", eval_loss[: -len("loss")]) if eval_loss else (None, "")
        if split is not None:
            for name, weighted in self._stored_metrics[split].items():
                logs[prefix + name] = sum(v for v, _ in weighted) / sum(n for _, n in weighted)
            self._stored_metrics[split].clear()
        # Real-token throughput: per logging window in train logs, over the run in the end-of-training metrics.
        if split == "train":
            logs.update(self.throughput.window(self.accelerator))
        elif split == "eval":
            self.throughput.exclude(logs.get(prefix + "runtime", 0.0))
        elif "train_runtime" in logs:
            logs.update(self.throughput.total(self.accelerator), global_batch_size=global_batch_size(self.args))
        super().log(logs, start_time)
