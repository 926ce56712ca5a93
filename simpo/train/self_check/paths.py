"""The start-up self-check's vocabulary (simpo/train/self_check/__init__.py tells the whole): a Path (layout,
log-prob kernel, Liger), the Options a run's settings allow, the Demands of its explicit settings, the tolerances per
dtype, and the Decision with its Rows and how they read: the start summary's lines, the table, the refusals."""

import dataclasses
import json
from dataclasses import dataclass, field

from simpo.kernels.dispatch import kernel_setting
from simpo.train.layouts import PLAIN, LayoutChoice
from simpo.train.logps import FULL_LOGITS, KERNEL_PATHS

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
