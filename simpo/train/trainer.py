"""SimPOTrainer: a transformers.Trainer whose loss is SimPO's. It overrides compute_loss, prediction_step, evaluate (to
know it is evaluating) and log.

The data's way through a step: the layout (simpo/train/layouts/__init__.py, chosen once) collates the tokenised pairs
(simpo/data/tokenization.py) and builds the model's forward arguments; simpo/train/logps.py runs the model and returns
each scored token's log-prob; simpo/train/loss.py turns them into the loss and the logged metrics.
"""

import functools
import logging

import torch
from torch import nn
from transformers import AutoModelForCausalLM, Trainer

from simpo.data.tokenization import tokenize_pairs
from simpo.kernels.ledger import KernelLedger
from simpo.models.loading import resolve_dtype
from simpo.models.modules import disable_dropout, is_quantised, unwrap_model
from simpo.reporting.summary import RunSummary, global_batch_size
from simpo.reporting.throughput import TokenThroughput
from simpo.run.checkpoints import resume_advice
from simpo.run.elastic import ElasticResume
from simpo.run.finite import FiniteUpdates
from simpo.train.config import SimPOConfig
from simpo.train.layouts import LayoutSlot, build_layout, layout_options
from simpo.train.layouts.batch import ScoringBatch
from simpo.train.liger import patch_liger
from simpo.train.logps import logps_options, token_logps_function
from simpo.train.loss import average_logps, preference_metrics, sft_nll, simpo_loss
from simpo.train.memory_plan import CheckpointingChoice, choose_checkpointing
from simpo.train.metrics import FiniteLossGuard, PairWeightedMeans
from simpo.train.reporting import simpo_start_summary
from simpo.train.samples import EvalSamples
from simpo.train.self_check import Options, Path, SelfCheck, explicit_demands

logger = logging.getLogger(__name__)


def load_model(model_id: str, args: SimPOConfig) -> nn.Module:
    kwargs = dict(args.model_init_kwargs or {})
    if "dtype" in kwargs:
        kwargs["dtype"] = resolve_dtype(kwargs["dtype"])
    return AutoModelForCausalLM.from_pretrained(model_id, **kwargs)


def wrap_peft(model: nn.Module, peft_config, args: SimPOConfig) -> nn.Module:
    """LoRA (QLoRA on a quantised model: checkpointed unless activation_checkpointing is false)."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if is_quantised(model):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=args.activation_checkpointing is not False,
            gradient_checkpointing_kwargs=args.activation_checkpointing_kwargs,
        )
    return get_peft_model(model, peft_config)


def settle_checkpointing(model: nn.Module, args: SimPOConfig, peft: bool) -> CheckpointingChoice:
    """Resolves activation_checkpointing (auto: from the memory estimate) in args, before the Trainer reads it."""
    choice = choose_checkpointing(model, args)
    args.activation_checkpointing = args.gradient_checkpointing = choice.enabled
    if choice.enabled and peft and not is_quantised(model):
        # Frozen embeddings give checkpointed blocks inputs without grad; make them require it.
        model.enable_input_require_grads()
    logger.info("Activation checkpointing %s (%s)", "on" if choice.enabled else "off", choice.reason)
    return choice


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
        **kwargs,
    ):
        if isinstance(model, str):
            model = load_model(model, args)
        if peft_config is not None:
            model = wrap_peft(model, peft_config, args)
        self.checkpointing = settle_checkpointing(model, args, peft=peft_config is not None)
        self.liger, liger_patch = patch_liger(model, args)
        if args.disable_dropout:
            disable_dropout(model)
        self.pad_token_id = args.padding_value if args.padding_value is not None else processing_class.pad_token_id
        # The paths this run may take (refused here when a setting cannot run at all); the start-up self-check
        # chooses among them once training begins (simpo/train/self_check/), until then the first of each.
        self.dense_kernel = unwrap_model(model).config._attn_implementation
        options = Options(
            layout_options(model, args),
            logps_options(args),
            [[True], [False]] if liger_patch is not None else [[False]],
            explicit_demands(args),
        )
        self.kernels = KernelLedger()  # what the log-prob kernels ran and chose in this run
        self.liger_patch = liger_patch
        first = options.first
        self.layout = LayoutSlot(build_layout(first.layout, model, args, self.pad_token_id, self.dense_kernel))
        self.token_logps = token_logps_function(first.logps, self.kernels)
        self.self_check = SelfCheck(self, options, self.dense_kernel, liger_patch)
        self.dropped_pairs = {}  # per dataset ("train", "eval"): DroppedRow records of the pairs left out
        self.truncated_pairs = {}  # per dataset: CutRow records of the pairs truncation cut
        with args.main_process_first(desc="tokenizing preference pairs"):
            train_dataset = self.tokenize(train_dataset, processing_class, args, "train")
            eval_dataset = self.tokenize(eval_dataset, processing_class, args, "eval")
        super().__init__(
            model=model,
            args=args,
            data_collator=self.layout,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        self._stored_metrics = {"train": PairWeightedMeans(), "eval": PairWeightedMeans()}
        self.loss_guard = FiniteLossGuard()
        self._eval_prefix = None  # set while evaluate() runs: its logs are evaluation metrics
        self.throughput = TokenThroughput()
        # the start summary, with what an elastic resume changed (the plan the launch gave its ElasticResume)
        plan = next((cb.plan for cb in self.callback_handler.callbacks if isinstance(cb, ElasticResume)), None)
        note = plan.note if plan is not None else None
        self.add_callback(self.self_check)  # before the start summary, which shows its decision
        self.add_callback(RunSummary(functools.partial(simpo_start_summary, self, resume_note=note)))
        # Before each optimizer update: the last micro-batch's loss, then the gradients; before each save: the weights.
        self.add_callback(FiniteUpdates(before_update=self.loss_guard.check))
        if args.generate_during_eval:
            self.add_callback(EvalSamples(self))  # after the report_to callbacks, which set up on_train_begin first

    def use_path(self, path: Path) -> None:
        """Train on `path` (a self-check Path): its layout (and the attention kernel it needs), its log-prob
        function, Liger on or off."""
        self.layout.layout = build_layout(path.layout, self.model, self.args, self.pad_token_id, self.dense_kernel)
        self.token_logps = token_logps_function(path.logps, self.kernels)
        if self.liger_patch is not None:
            (self.liger_patch.enable if path.liger else self.liger_patch.disable)()
            if not path.liger:
                self.liger = "off (the start-up self-check rejected Liger's layers on this device)"

    def tokenize(self, dataset, tokenizer, args: SimPOConfig, name: str):
        if dataset is None:
            return None
        dataset, self.dropped_pairs[name], self.truncated_pairs[name] = tokenize_pairs(
            dataset, tokenizer, args, f"{name}_dataset"
        )
        return dataset

    def batch_loss_and_metrics(self, model: nn.Module, batch: ScoringBatch) -> tuple[torch.Tensor, dict]:
        args = self.args
        num_seqs = batch["response_lengths"].numel()
        num_pairs = num_seqs // 2
        inputs = self.layout.model_inputs(batch)
        token_logps, token_logit_means = self.token_logps(model, inputs, batch["score_index"], batch["score_labels"])
        avg_logps = average_logps(token_logps, batch["score_seq"], num_seqs)
        chosen, rejected = avg_logps[:num_pairs], avg_logps[num_pairs:]
        losses = simpo_loss(chosen, rejected, args.beta, args.gamma, args.loss_type, args.label_smoothing)
        sft_loss = sft_nll(token_logps, batch["score_seq"], num_pairs)
        loss = losses.mean() + args.sft_weight * sft_loss if args.sft_weight > 0 else losses.mean()
        # A NaN poisons every weight it touches: stop before a second optimizer step, without a host sync per step.
        phase, step = "training" if model.training else "evaluation", self.state.global_step + 1
        seen = loss.detach(), losses.detach(), batch["response_lengths"]
        self.loss_guard.watch(
            loss,
            lambda: (
                f"Non-finite SimPO loss ({seen[0].item()}) in {phase} at step {step}: per-pair losses"
                f" {seen[1].tolist()}, response lengths {seen[2].tolist()}. Lower the learning rate or check the data;"
                f" {resume_advice(self.args.output_dir)}."
            ),
        )

        metrics = preference_metrics(chosen, rejected, args.beta, args.gamma)
        mean_logits = average_logps(token_logit_means, batch["score_seq"], num_seqs)
        metrics["logits/chosen"], metrics["logits/rejected"] = mean_logits[:num_pairs], mean_logits[num_pairs:]
        metrics["sft_loss"] = sft_loss.detach()
        lengths = batch["response_lengths"].float()
        metrics["lengths/chosen"], metrics["lengths/rejected"] = lengths[:num_pairs], lengths[num_pairs:]
        # attention_mask is the 2D [R, L] real-token mask in every layout (the forward's mask comes from the layout).
        metrics["tokens/padding_share"] = 1 - batch["attention_mask"].sum() / batch["attention_mask"].numel()
        return loss, metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.throughput.add(self.layout.real_tokens(inputs))
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
        """Kept on the device until log() averages them over the pairs of all processes."""
        self._stored_metrics[split].add(metrics)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        self._eval_prefix = metric_key_prefix + "_"
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._eval_prefix = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the stored metrics to the log they belong to: evaluation metrics (with their prefix) while evaluate()
        runs; a training window's to the Trainer's periodic logs (they carry "loss"); none to the end-of-training
        summary (train_runtime, ...), which gets the run's throughput instead."""
        self.loss_guard.check()  # the last micro-batch before this log
        if self._eval_prefix is not None:
            split, prefix = "eval", self._eval_prefix
        else:
            split, prefix = ("train", "") if "loss" in logs else (None, "")
        if split is not None:
            means = self._stored_metrics[split].pop(self.accelerator)
            logs.update({prefix + name: mean for name, mean in means.items()})
        # Real-token throughput: per logging window in train logs, over the run in the end-of-training metrics.
        if split == "train":
            logs.update(self.throughput.window(self.accelerator))
        elif split == "eval":
            self.throughput.exclude(logs.get(prefix + "runtime", 0.0))
        elif "train_runtime" in logs:
            logs.update(self.throughput.total(self.accelerator), global_batch_size=global_batch_size(self.args))
        super().log(logs, start_time)
