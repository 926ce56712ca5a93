"""Running the start-up self-check (simpo/train/self_check/__init__.py tells the whole): the slice of training data,
a PathRunner that scores a path on it as training would (log-probs, and gradients where the launch allows a side
backward), the comparison with the reference, the reduction over processes, and the Checker that walks the options
in their declared order and decides."""

import dataclasses
import logging
import math
import statistics
import time

import torch
import torch.distributed as dist

from simpo.kernels.ledger import KernelLedger
from simpo.models.modules import unwrap_model
from simpo.train.layouts import build_layout
from simpo.train.logps import token_logps_function
from simpo.train.loss import average_logps, sft_nll, simpo_loss
from simpo.train.self_check.paths import CHECK_NAMES, COMPONENTS, REFERENCE, TOLERANCE, Options, Path, Row

logger = logging.getLogger(__name__)

SLICE_PAIRS = 4

SLICE_MIN_TOKENS = 64

SLICE_LOGITS = 2**27  # full logits of the slice: 256 MiB in bf16, a few times that with their log-softmax and grad

GRAD_PROBE_ELEMENTS = 2**28

TIMED_STEPS = 3


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


def dist_rank() -> int:
    return dist.get_rank() if world() > 1 else 0


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


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
