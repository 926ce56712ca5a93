"""The start-up self-check (self_check: auto | always | off): before the first optimizer step, a run checks the fast
paths it would train on against the plain reference path on its own device, falls back where one differs or raises,
and, for the settings left at auto, chooses by measurement among the paths that agree.

What is compared. The first SLICE_PAIRS pairs of the training set, each sequence cut to slice_tokens() tokens so
that the plain path's [tokens, vocabulary] logits stay small, are scored by
    the reference: the plain layout (one right-padded row per sequence), the model's full logits, Liger off;
    a path: a layout (prefix sharing, padding-free or not, dense masks or FlexAttention block masks), a log-prob
        kernel (Triton tiles, torch tiles or full logits), Liger on or off;
both in the run's own precision (its weights, its autocast), in the mode training runs in, with the global random
state put back afterwards. A path agrees when every sequence's average response log-prob (what SimPO's reward scales)
is within TOLERANCE of the reference's and, where the launch allows a backward outside training, the gradient of
SimPO's loss on the slice is within TOLERANCE's relative error of the reference's (over the trainable tensors,
smallest first, up to GRAD_PROBE_ELEMENTS elements). That backward fills .grad, which is put back untouched; the
optimizer's state does not exist before its first step. One process and DDP allow it (the check calls the bare
model, so DDP's reducer sees nothing); under DeepSpeed (any ZeRO stage) and FSDP a backward would run their gradient
hooks, which reduce into the optimizer's partitions or the shards, so there the forward is checked (through the
same gathering hooks as training) and the log-probs alone are compared; so it is for FlexAttention on CPU, which
has no backward there. TOLERANCE is per the dtype the model computes in: two correct paths differ by rounding only
(other kernels, other summation orders); a path that lets a token see another, drops a transform or scores another
position differs by more.

The order. Each component's options, best first:
    log-probs   Triton tiles (CUDA) -> torch tiles -> full logits
    layout      prefix sharing with FlexAttention (GPUs) -> with dense masks -> the plain layout
    Liger       on -> off
First the best of each are checked together (on a GPU, every layout of the first tier with them: padding-free or not,
FlexAttention or dense masks for settings at auto; see below); where that agrees, nothing else runs. Where it
differs, each component is checked alone, the others at the reference's, down its order until one agrees (in a tier
of equals on a GPU, every one), and those are checked together; should that still differ, the log-probs, then the
layout, then Liger step down to the reference until the paths together agree. A setting the
user set explicitly (prefix_sharing, padding_free, flex_attention or liger_kernels true; SIMPO_LOGPS_KERNEL) that
the decision leaves out is refused with the figures (FastPathError), never a silent fallback. fused_logps: true, the
default, allows the fall back to full logits.

Measurement. On a GPU (TIMED_DEVICES), the layouts of a tier that agree are timed together with the chosen kernel:
TIMED_STEPS forward and backward passes of the slice (forward only where the backward is not allowed) after the
check's own, and the fastest is kept; the Triton tiles time their tile sizes themselves (simpo/kernels/
triton_tiles.py). On a CPU the first that agrees is kept, so that CPU runs stay bit-identical run to run.

Every process runs the same checks on the same slice; each check's figures are reduced to their maximum over the
processes, so a path that differs on one rank is rejected on all, and rank 0's decision is broadcast: a layout that
differed between ranks would hang a collective. The decision is kept on disk (SIMPO_SELF_CHECK_CACHE, default
~/.cache/simpo/self_check.json, read by rank 0) per device name, precision, model config, trainable parameters,
batch and slice shapes, launch, options and library versions: self_check: auto reuses it, always checks again,
off trains on the first option of each without checking.
"""

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from simpo.config.run_record import note_in_run_config
from simpo.errors import FastPathError
from simpo.kernels.dispatch import kernel_setting
from simpo.kernels.ledger import KernelLedger
from simpo.kernels.tile_cache import cache_file, read_entry, write_entry
from simpo.models.modules import unwrap_model
from simpo.train.layouts import PLAIN, LayoutChoice, build_layout
from simpo.train.logps import FULL_LOGITS, KERNEL_PATHS, token_logps_function
from simpo.train.loss import average_logps, sft_nll, simpo_loss

logger = logging.getLogger(__name__)

SLICE_PAIRS = 4
SLICE_MIN_TOKENS = 64
SLICE_LOGITS = 2**27  # full logits of the slice: 256 MiB in bf16, a few times that with their log-softmax and grad
GRAD_PROBE_ELEMENTS = 2**28
TIMED_DEVICES = ("cuda",)
TIMED_STEPS = 3
# dtype the model computes in -> (largest |difference| of a sequence's average log-prob, in nats; largest relative
# L2 difference of the gradients). fp32: rounding differences are ~1e-6 here (the CPU tests measure them); tf32 and
# fp16 keep 10 mantissa bits, bf16 7: their correct paths differ by about 2^-10 and 2^-7 relative per operation,
# summed over the layers. A leak of one reply into the other, or a token scored off by one, moves the average by
# far more on real models.
TOLERANCE = {
    "float32": (1e-3, 1e-3),
    "tf32": (1e-2, 3e-2),
    "float16": (1e-2, 3e-2),
    "bfloat16": (5e-2, 1e-1),
}
COMPONENTS = ("logps", "layout", "liger")  # the step-down order when the paths together differ
CHECK_NAMES = {"logps": "log-probs", "layout": "layout", "liger": "Liger"}


@dataclass(frozen=True)
class Path:
    """One way a run may compute its log-probs: layout, log-prob kernel, Liger."""

    layout: LayoutChoice = PLAIN
    logps: str = FULL_LOGITS
    liger: bool = False

    @property
    def name(self) -> str:
        return f"{self.layout.name}, {self.logps}" + (", Liger" if self.liger else "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Path":
        return cls(LayoutChoice(**values["layout"]), values["logps"], values["liger"])


REFERENCE = Path()


@dataclass
class Row:
    """One check: which (a component alone, or "together"), the path, its figures and what became of it."""

    check: str
    path: str
    logp_error: float | None = None
    grad_error: float | None = None
    step_seconds: float | None = None
    verdict: str = "agrees"  # agrees | differs | raised: ... | kept | faster one kept | not needed

    @property
    def agrees(self) -> bool:
        return self.verdict in ("agrees", "kept", "faster one kept")


@dataclass
class Decision:
    """What the run trains on and why: the path, every check's row, the precision and what was compared, where the
    decision came from (checked, the cache, or not checked) and the seconds it took this launch."""

    path: Path
    rows: list[Row] = field(default_factory=list)
    dtype: str = "float32"
    device: str = "cpu"
    gradients: str = "compared"
    source: str = "checked"
    seconds: float = 0.0
    slice: str = ""

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "path": self.path.to_dict()}

    @classmethod
    def from_dict(cls, values: dict, source: str) -> "Decision":
        rows = [Row(**row) for row in values["rows"]]
        fields = {k: values[k] for k in ("dtype", "device", "gradients", "slice")}
        return cls(Path.from_dict(values["path"]), rows, source=source, **fields)


@dataclass
class Demand:
    """An explicit setting and the paths that honour it."""

    setting: str  # as the user wrote it, e.g. "prefix_sharing: true"
    component: str
    honoured: object  # Path -> bool
    advice: str


class Options:
    """Each component's options in tiers, best first (the last tier of each is the reference's option), and the
    explicit settings' demands."""

    def __init__(self, layout: list, logps: list, liger: list, demands: list[Demand]):
        self.tiers = {"layout": layout, "logps": logps, "liger": liger}
        self.demands = demands

    @property
    def first(self) -> Path:
        """The path a run takes without the check: the first option of each."""
        return Path(**{c: tiers[0][0] for c, tiers in self.tiers.items()})

    def describe(self) -> str:
        text = {c: [[getattr(o, "name", o) for o in tier] for tier in tiers] for c, tiers in self.tiers.items()}
        return json.dumps(text, sort_keys=True)


def explicit_demands(args) -> list[Demand]:
    """The settings the user set explicitly to a fast path: refused, not replaced, where that path differs."""
    demands = []
    for key, attribute in (("prefix_sharing", "prefix_sharing"), ("padding_free", "padding_free")):
        if getattr(args, key) is True:
            demands.append(
                Demand(
                    f"{key}: true",
                    "layout",
                    lambda path, a=attribute: getattr(path.layout, a),
                    f"set {key}: auto to fall back where it differs, or false",
                )
            )
    if args.flex_attention is True:
        demands.append(
            Demand(
                "flex_attention: true",
                "layout",
                lambda path: path.layout.flex,
                "set flex_attention: auto (dense masks where FlexAttention differs) or false",
            )
        )
    if args.liger_kernels is True:
        demands.append(
            Demand(
                "liger_kernels: true",
                "liger",
                lambda path: path.liger,
                "set liger_kernels: auto (off where Liger differs) or false",
            )
        )
    kernel = kernel_setting() if args.fused_logps else "auto"
    if kernel != "auto":
        demands.append(
            Demand(
                f"SIMPO_LOGPS_KERNEL={kernel}",
                "logps",
                lambda path, name=KERNEL_PATHS[kernel]: path.logps == name,
                "unset SIMPO_LOGPS_KERNEL (auto falls back to another kernel or to full logits)",
            )
        )
    return demands


def compute_dtype(model, args) -> str:
    """The dtype the model computes in: the autocast dtype, else its weights' (fp32 with reduced-precision
    matmuls, TF32 on GPUs: "tf32")."""
    if args.bf16:
        return "bfloat16"
    if args.fp16:
        return "float16"
    dtype = next((p.dtype for p in model.parameters() if p.dtype.is_floating_point), torch.float32)
    if dtype == torch.float32:
        reduced = torch.get_float32_matmul_precision() != "highest" or getattr(args, "tf32", False)
        on_cuda = args.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
        return "tf32" if reduced or on_cuda else "float32"
    return str(dtype).replace("torch.", "")


def side_backward_problem(trainer) -> str | None:
    """Why this launch cannot run a backward outside training without touching the optimizer's state, or None."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        return "log-probs only: under DeepSpeed a backward would reduce into the optimizer's gradient partitions"
    if getattr(trainer, "is_fsdp_enabled", False):
        return "log-probs only: under FSDP a backward would reduce-scatter into the sharded gradients"
    return None


def slice_tokens(vocab_size: int, max_length: int, pairs: int = SLICE_PAIRS) -> int:
    """Tokens per sequence in the slice: the plain path's logits held to SLICE_LOGITS elements."""
    return min(max_length, max(SLICE_MIN_TOKENS, SLICE_LOGITS // (2 * pairs * vocab_size)))


SEQUENCE_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


def cut_pair(feature: dict, tokens: int, label_pad_token_id: int) -> dict | None:
    """The pair with at most `tokens` tokens a side: the prompt's end (up to half of them) and the replies' start;
    None when a side keeps no scored token."""

    def first_label(labels):
        return next((i for i, label in enumerate(labels) if label != label_pad_token_id), len(labels))

    prompt = min(first_label(feature["chosen_labels"]), first_label(feature["rejected_labels"]))
    start = max(0, prompt - tokens // 2)
    cut = {key: list(feature[key][start : start + tokens]) for key in SEQUENCE_KEYS}
    scored = all(any(label != label_pad_token_id for label in cut[side][1:]) for side in SEQUENCE_KEYS[1::2])
    return cut if scored else None


def training_slice(dataset, vocab_size: int, max_length: int, label_pad_token_id: int) -> list[dict]:
    tokens = slice_tokens(vocab_size, max_length)
    pairs = (cut_pair(dataset[i], tokens, label_pad_token_id) for i in range(min(len(dataset), 4 * SLICE_PAIRS)))
    return [pair for pair in pairs if pair is not None][:SLICE_PAIRS]


def dropout_free(model) -> bool:
    config = getattr(unwrap_model(model), "config", None)
    text = config.get_text_config() if config is not None else None
    attention = getattr(text, "attention_dropout", 0.0) or 0.0
    return attention == 0 and all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def probe_parameters(trainable: list) -> list:
    """The trainable tensors whose gradients are compared: smallest first, up to GRAD_PROBE_ELEMENTS elements."""
    probe, total = [], 0
    for p in sorted(trainable, key=lambda p: p.numel()):
        if total + p.numel() > GRAD_PROBE_ELEMENTS:
            break
        probe.append(p)
        total += p.numel()
    return probe


class PathRunner:
    """Runs a path on the slice with the trainer's model, as training would: returns each sequence's average
    log-prob (fp32) and, where allowed, the compared gradients."""

    def __init__(self, trainer, features: list[dict], dense_kernel: str, liger_patch):
        self.trainer, self.features = trainer, features
        self.model = trainer.model  # the bare model: no DDP reducer; ZeRO-3's and FSDP's hooks are on its modules
        self.dense_kernel, self.liger_patch = dense_kernel, liger_patch
        self.ledger = KernelLedger()  # the check's kernel calls stay out of the run's ledger
        self.no_backward = side_backward_problem(trainer)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.probe = probe_parameters(self.trainable)

    def backward(self, path: Path) -> bool:
        flex_on_cpu = path.layout.flex and self.trainer.args.device.type != "cuda"
        return self.no_backward is None and not flex_on_cpu and bool(self.probe)

    def run(self, path: Path):
        args = self.trainer.args
        layout = build_layout(path.layout, self.model, args, self.trainer.pad_token_id, self.dense_kernel)
        if self.liger_patch is not None:
            (self.liger_patch.enable if path.liger else self.liger_patch.disable)()
        batch = self.trainer._prepare_inputs(layout(self.features))
        token_logps = token_logps_function(path.logps, self.ledger)
        backward = self.backward(path)
        with torch.set_grad_enabled(backward), self.trainer.compute_loss_context_manager():
            logps, _ = token_logps(self.model, layout.model_inputs(batch), batch["score_index"], batch["score_labels"])
            num_seqs = batch["response_lengths"].numel()
            averages = average_logps(logps, batch["score_seq"], num_seqs)
        if not backward:
            return averages.detach().float(), None
        pairs = num_seqs // 2
        chosen, rejected = averages[:pairs], averages[pairs:]
        loss = simpo_loss(chosen, rejected, args.beta, args.gamma, args.loss_type, args.label_smoothing).mean()
        loss = loss + args.sft_weight * sft_nll(logps, batch["score_seq"], pairs)
        return averages.detach().float(), self.gradients(loss)

    def gradients(self, loss) -> list:
        """loss's gradients of the probe, with every .grad put back as it was."""
        saved = [p.grad for p in self.trainable]
        for p in self.trainable:
            p.grad = None
        try:
            loss.backward()
            return [p.grad for p in self.probe]
        finally:
            for p, grad in zip(self.trainable, saved):
                p.grad = grad

    def step_seconds(self, path: Path) -> float:
        """The median of TIMED_STEPS runs of the path (each synchronised)."""
        times = []
        for _ in range(TIMED_STEPS):
            synchronize(self.trainer.args.device)
            start = time.perf_counter()
            self.run(path)
            synchronize(self.trainer.args.device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def differences(reference, result) -> tuple[float, float | None]:
    """(largest |average log-prob difference|, relative L2 gradient difference or None); non-finite is inf."""
    (ref_avg, ref_grads), (avg, grads) = reference, result
    logp = (avg - ref_avg).abs().max().item() if avg.numel() else 0.0
    grad = None
    if grads is not None and ref_grads is not None:
        diff = ref = 0.0
        for g, r in zip(grads, ref_grads):
            g = torch.zeros_like(r) if g is None else g
            r = torch.zeros_like(g) if r is None else r
            diff += (g.float() - r.float()).square().sum().item()
            ref += r.float().square().sum().item()
        grad = math.sqrt(diff) / max(math.sqrt(ref), 1e-30)
    finite = lambda x: x if x is None or math.isfinite(x) else math.inf
    return finite(logp), finite(grad)


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def reduce_max(values: list[float], device) -> list[float]:
    """Each value's maximum over the processes (the values themselves in one process)."""
    if world() == 1:
        return values
    device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def broadcast(value):
    """Rank 0's value on every process."""
    if world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Checker:
    """Runs the checks in the declared order and decides (the module's docstring)."""

    def __init__(self, runner: PathRunner, options: Options, dtype: str, timed: bool):
        self.runner, self.options, self.timed = runner, options, timed
        self.logp_tolerance, self.grad_tolerance = TOLERANCE.get(dtype, TOLERANCE["bfloat16"])
        self.rows: list[Row] = []
        self.results: dict[Path, Row] = {}
        self.reference = runner.run(REFERENCE)

    def check(self, path: Path, name: str) -> Row:
        if path == REFERENCE:
            return self.results.setdefault(path, Row(name, path.name, 0.0, None, verdict="agrees"))
        if path in self.results:
            return self.results[path]
        try:
            logp, grad = differences(self.reference, self.runner.run(path))
            message = None
        except Exception as error:  # a kernel that raises on this device is a path that does not agree
            logp, grad, message = math.inf, None, f"{type(error).__name__}: {error}"
            logger.info("self-check: %s raised", path.name, exc_info=True)
        raised, logp, grad = reduce_max([float(message is not None), logp, -1.0 if grad is None else grad], self.device)
        grad = None if grad < 0 else grad
        agrees = not raised and logp <= self.logp_tolerance and (grad is None or grad <= self.grad_tolerance)
        verdict = "agrees" if agrees else "differs" if not raised else f"raised: {message or 'on another process'}"
        row = Row(name, path.name, None if raised else logp, grad, verdict=verdict)
        self.rows.append(row)
        self.results[path] = row
        return row

    @property
    def device(self):
        return self.runner.trainer.args.device

    def alone(self, component: str) -> list:
        """The component's options that agree with the others at the reference's: the first tier with any."""
        for tier in self.options.tiers[component]:
            agreeing = []
            for option in tier:
                if self.check(dataclasses.replace(REFERENCE, **{component: option}), CHECK_NAMES[component]).agrees:
                    agreeing.append(option)
                    if not (self.timed and len(tier) > 1):
                        break
            if agreeing:
                return agreeing
        return [getattr(REFERENCE, component)]

    def decide(self) -> Path:
        """The first options together (on a GPU, each layout of the first tier with them); where none agrees, each
        component alone, then the agreeing ones together, stepping down until they agree."""
        tiers = self.options.tiers
        first = {component: tiers[component][0] for component in COMPONENTS}
        chosen = self.fastest(self.together(first if self.timed else {c: o[:1] for c, o in first.items()}))
        if chosen is not None:
            return chosen
        best = {component: self.alone(component) for component in COMPONENTS}
        together = self.together(best)
        chosen = self.fastest(together)
        if chosen is not None:
            return chosen
        path = together[0]
        for component in COMPONENTS:  # step down until the paths together agree
            path = dataclasses.replace(path, **{component: getattr(REFERENCE, component)})
            if self.check(path, "together").agrees:
                return path
        return REFERENCE

    @staticmethod
    def together(options: dict) -> list[Path]:
        """Each layout option with the first log-prob and Liger options."""
        return [
            Path(layout=layout, logps=options["logps"][0], liger=options["liger"][0]) for layout in options["layout"]
        ]

    def fastest(self, paths: list[Path]) -> Path | None:
        """Of the paths that agree, the one alone, or (a tier of equals on a GPU) the fastest; None if none does."""
        agreeing = [path for path in paths if self.check(path, "together").agrees]
        if len(agreeing) <= 1:
            return agreeing[0] if agreeing else None
        seconds = reduce_max([self.runner.step_seconds(path) for path in agreeing], self.device)
        chosen = agreeing[seconds.index(min(seconds))]
        for path, step in zip(agreeing, seconds):
            row = self.results[path]
            row.step_seconds, row.verdict = step, "kept" if path == chosen else "faster one kept"
        return chosen


class SelfCheck(TrainerCallback):
    """The check, when training begins (after the model is prepared and a checkpoint loaded, before the start
    summary and the first batch): decides the trainer's path (trainer.use_path) and keeps the Decision."""

    def __init__(self, trainer, options: Options, dense_kernel: str, liger_patch):
        self.trainer, self.options = trainer, options
        self.dense_kernel, self.liger_patch = dense_kernel, liger_patch
        self.decision: Decision | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.decision is None:
            start = time.perf_counter()
            decision = self.decide()
            decision.seconds = time.perf_counter() - start
            problems = refusals(decision, self.options.demands)
            if problems:
                raise FastPathError(*problems)
            self.decision = decision
            self.trainer.use_path(decision.path)
            self.record()

    def decide(self) -> Decision:
        trainer, args = self.trainer, self.trainer.args
        model = trainer.model
        dtype, device = compute_dtype(model, args), device_name(args.device)
        first = self.options.first
        if args.self_check == "off":
            return Decision(first, dtype=dtype, device=device, gradients="-", source="not checked (self_check: off)")
        if first == REFERENCE:
            return Decision(first, dtype=dtype, device=device, gradients="-", source="nothing to check (plain path)")
        vocab = unwrap_model(model).config.get_text_config().vocab_size
        features = training_slice(trainer.train_dataset, vocab, args.max_length, args.label_pad_token_id)
        if not features:
            return Decision(first, dtype=dtype, device=device, gradients="-", source="not checked (no pair to check)")
        shape = f"{len(features)} pairs, at most {slice_tokens(vocab, args.max_length)} tokens a sequence"
        path, key = cache_file("SIMPO_SELF_CHECK_CACHE", "self_check.json"), self.cache_key(dtype, device, shape)
        stored = broadcast(read_entry(path, key) if args.self_check == "auto" and dist_rank() == 0 else None)
        if stored is not None:
            try:
                return Decision.from_dict(stored, source=f"from the cache ({path})")
            except (KeyError, TypeError, ValueError):  # an entry an older simpo wrote: check again
                pass
        decision = self.check(features, dtype, device, shape)
        if dist_rank() == 0:
            write_entry(path, key, decision.to_dict())
        return decision

    def check(self, features: list[dict], dtype: str, device: str, shape: str) -> Decision:
        trainer = self.trainer
        model = trainer.model
        runner = PathRunner(trainer, features, self.dense_kernel, self.liger_patch)
        timed = trainer.args.device.type in TIMED_DEVICES
        was_training = model.training
        model.train(dropout_free(model))  # as training runs, unless dropout would make two runs differ
        devices = [trainer.args.device] if trainer.args.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                checker = Checker(runner, self.options, dtype, timed)
                path = broadcast(checker.decide())
        finally:
            model.train(was_training)
            if self.liger_patch is not None:
                self.liger_patch.enable()  # as before the check; use_path sets the decision's
        gradients = runner.no_backward or ("gradients compared" if runner.probe else "log-probs only")
        return Decision(path, checker.rows, dtype, device, gradients, "checked", slice=shape)

    def cache_key(self, dtype: str, device: str, shape: str) -> str:
        trainer, args = self.trainer, self.trainer.args
        lm = unwrap_model(trainer.model)
        config = {k: v for k, v in lm.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        config["_attn_implementation"] = self.dense_kernel
        digest = lambda text: hashlib.sha1(text.encode()).hexdigest()[:12]
        trainable = sum(getattr(p, "ds_numel", None) or p.numel() for p in lm.parameters() if p.requires_grad)
        launch = f"world {world()}, {side_backward_problem(trainer) or 'backward'}"
        parts = [
            device,
            dtype,
            f"model {digest(json.dumps(config, sort_keys=True, default=str))}",
            f"trainable {trainable}",
            f"checkpointing {bool(args.gradient_checkpointing)}",
            f"batch {args.per_device_train_batch_size}",
            shape,
            launch,
            f"options {digest(self.options.describe())}",
            versions(),
        ]
        return " | ".join(parts)

    def record(self) -> None:
        """The decision in the log, and (main process) at the end of run_config.yaml."""
        lines = decision_lines(self.decision)
        for text in lines + (table(self.decision) if self.decision.rows else []):
            logger.info("self-check: %s", text)
        if self.trainer.args.should_save:
            note_in_run_config(self.trainer.args.output_dir, "start-up self-check", lines)


def dist_rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def versions() -> str:
    found = []
    for name in ("torch", "transformers", "triton", "liger-kernel", "simpo"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def figures(row: Row, tolerance: tuple[float, float]) -> str:
    if row.verdict.startswith("raised"):
        return row.verdict
    text = f"average log-probs differ from the plain path's by {row.logp_error:.3g} (tolerance {tolerance[0]:g})"
    if row.grad_error is not None:
        text += f", gradients by {row.grad_error:.3g} relative (tolerance {tolerance[1]:g})"
    return text


def refusals(decision: Decision, demands: list[Demand]) -> list[str]:
    """One message per explicit setting the decision leaves out, with the figures of the paths it rejected."""
    tolerance = TOLERANCE.get(decision.dtype, TOLERANCE["bfloat16"])
    problems = []
    for demand in demands:
        if demand.honoured(decision.path):
            continue
        checks = (CHECK_NAMES[demand.component], "together")
        failed = [row for row in decision.rows if not row.agrees and row.check in checks]
        found = "; ".join(f"{row.path}: {figures(row, tolerance)}" for row in failed) or "it did not agree"
        problems.append(
            f"{demand.setting}, but that path failed the start-up self-check on {decision.device}"
            f" ({decision.dtype}): {found}. Training on it would be wrong: {demand.advice}."
        )
    return problems


def decision_lines(decision: Decision) -> list[str]:
    """The start summary's and run_config.yaml's account: what runs, how it was decided, and each path rejected."""
    if decision.source != "checked":
        head = f"{decision.source}: {decision.path.name}"
    else:
        head = (
            f"{decision.seconds:.1f} s on {decision.device} ({decision.dtype}; {decision.gradients}; "
            f"{decision.slice}): runs {decision.path.name}"
        )
    tolerance = TOLERANCE.get(decision.dtype, TOLERANCE["bfloat16"])
    lines = [head]
    for row in decision.rows:
        if not row.agrees:
            lines.append(f"rejected {row.path}: {figures(row, tolerance)}")
        elif row.step_seconds is not None:
            lines.append(f"{row.verdict} {row.path}: {row.step_seconds * 1e3:.1f} ms a step of the slice")
    if decision.rows and all(row.agrees for row in decision.rows):
        worst = max(row.logp_error or 0.0 for row in decision.rows)
        lines.append(f"every path checked agrees (largest average log-prob difference {worst:.2g})")
    return lines


def table(decision: Decision) -> list[str]:
    """The checks as a markdown table (the device check prints it; the log keeps it)."""
    logp_tol, grad_tol = TOLERANCE.get(decision.dtype, TOLERANCE["bfloat16"])
    show = lambda x, f: "-" if x is None else f.format(x)
    lines = [
        f"| check | path | avg log-prob diff (tol {logp_tol:g}) | grad diff, relative (tol {grad_tol:g}) "
        "| step ms | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in decision.rows:
        ms = None if row.step_seconds is None else row.step_seconds * 1e3
        lines.append(
            f"| {row.check} | {row.path} | {show(row.logp_error, '{:.3g}')} | {show(row.grad_error, '{:.3g}')} "
            f"| {show(ms, '{:.1f}')} | {row.verdict} |"
        )
    return lines
