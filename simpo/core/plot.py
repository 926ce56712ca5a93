"""Training curves from a run's trainer_state.json, as PNG, headless (Agg canvas, no pyplot state).

    simpo-plot OUTPUT_DIR                      # -> OUTPUT_DIR/training_curves.png (train and eval on the same panels)
    simpo-plot RUN_A RUN_B ... --out cmp.png   # several runs (a sweep): their eval curves on shared panels

plot_run and compare_runs return what they drew, {panel title: [(series name, steps, values), ...]}, so callers
and tests can check the data rather than pixels.
"""

import json
import os
import sys

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simpo.core.errors import report_input_errors
from simpo.core.parser import CommandParser
from simpo.core.resume import last_complete_checkpoint
from simpo.data.validation import DataError

CURVES_FILE = "training_curves.png"

# Panel title -> metric names as logged in train entries; the eval_ version of each goes on the same panel.
RUN_PANELS = {
    "loss": ["loss"],
    "rewards: chosen vs rejected": ["rewards/chosen", "rewards/rejected"],
    "reward margin (chosen - rejected)": ["rewards/margins"],
    "accuracy and share of margins > gamma": ["rewards/accuracies", "rewards/margin_over_gamma"],
    "response length (tokens)": ["lengths/chosen", "lengths/rejected"],
    "learning rate": ["learning_rate"],
}
# An SFT run (simpo-sft, TRL's metrics) logs no rewards: its own panels.
SFT_PANELS = {
    "loss (assistant tokens)": ["loss"],
    "token accuracy": ["mean_token_accuracy"],
    "entropy": ["entropy"],
    "learning rate": ["learning_rate"],
}
COMPARE_PANELS = {
    "eval loss": "eval_loss",
    "eval rewards/accuracies": "eval_rewards/accuracies",
    "eval rewards/margins": "eval_rewards/margins",
    "eval rewards/margin_over_gamma": "eval_rewards/margin_over_gamma",
    "eval rewards/chosen": "eval_rewards/chosen",
    "eval rewards/rejected": "eval_rewards/rejected",
}


def state_file(output_dir: str) -> str:
    """output_dir/trainer_state.json, or the newest complete checkpoint's while a run is still going."""
    path = os.path.join(output_dir, "trainer_state.json")
    if os.path.isfile(path):
        return path
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        raise DataError(f"No trainer_state.json in {output_dir} (nor in a checkpoint-* folder under it).")
    return os.path.join(checkpoint, "trainer_state.json")


def load_state(output_dir: str) -> dict:
    with open(state_file(output_dir)) as f:
        return json.load(f)


def load_history(output_dir: str) -> list[dict]:
    return load_state(output_dir)["log_history"]


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every log entry holding key. Training entries hold "loss", evaluation ones eval_*."""
    points = [(h["step"], h[key]) for h in history if isinstance(h.get(key), (int, float)) and "step" in h]
    return [s for s, _ in points], [v for _, v in points]


def draw(panels: dict, path: str, title: str, eval_dashed: bool = True, columns: int = 3) -> None:
    """One subplot per panel. With eval_dashed, a metric's eval_ series shares its train colour, dashed."""
    rows = max(1, -(-len(panels) // columns))
    fig = Figure(figsize=(5 * columns, 4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (panel, lines) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, columns, i + 1)
        bases = []
        for name, xs, ys in lines:
            is_eval = eval_dashed and name.startswith("eval_")
            base = name[len("eval_") :] if is_eval else name
            bases += [base] if base not in bases else []
            ax.plot(
                xs,
                ys,
                color=f"C{bases.index(base) % 10}",
                linestyle="--" if is_eval else "-",
                marker="o" if is_eval or len(xs) < 30 else None,
                markersize=3,
                label=name,
            )
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if panel == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)


def plot_run(output_dir: str, out: str | None = None) -> dict:
    """Draw one run's curves into out (default output_dir/training_curves.png); return what was drawn.

    Each panel holds the train series and the eval_ series of its metrics; panels with no data are left out.
    """
    state = load_state(output_dir)
    history = state["log_history"]
    sft = any("mean_token_accuracy" in h for h in history)
    panels = {}
    for panel, keys in (SFT_PANELS if sft else RUN_PANELS).items():
        lines = []
        for key in keys:
            for name in (key, "eval_" + key):
                xs, ys = series(history, name)
                if xs:
                    lines.append((name, xs, ys))
        if lines:
            panels[panel] = lines
    if not panels:
        every = state.get("logging_steps")
        raise DataError(
            f"{output_dir}: the log history has no metric to plot: nothing was logged in its"
            f" {state.get('global_step')} steps (a log every {every} steps, no evaluation). Set"
            " logging_steps below the number of steps, or evaluate (eval_strategy), for curves."
        )
    title = f"{'SFT' if sft else 'SimPO'} run: {os.path.abspath(output_dir)}"
    draw(panels, out or os.path.join(output_dir, CURVES_FILE), title)
    return panels


def run_labels(output_dirs: list[str]) -> list[str]:
    """Folder names, or whole paths where two runs share a folder name."""
    names = [os.path.basename(os.path.normpath(d)) for d in output_dirs]
    return names if len(set(names)) == len(names) else [os.path.normpath(d) for d in output_dirs]


def compare_runs(output_dirs: list[str], out: str) -> dict:
    """Eval curves of several runs (a sweep) on shared panels, one line per run; return what was drawn."""
    histories = {label: load_history(d) for label, d in zip(run_labels(output_dirs), output_dirs)}
    panels = {}
    for panel, key in COMPARE_PANELS.items():
        lines = [(label, *series(history, key)) for label, history in histories.items()]
        lines = [line for line in lines if line[1]]
        if lines:
            panels[panel] = lines
    if not panels:
        raise DataError("None of these runs logged an evaluation: set eval_strategy (and an eval split).")
    draw(panels, out, f"eval curves of {len(output_dirs)} runs", eval_dashed=False)
    return panels


@report_input_errors("simpo-plot")
def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(
        "simpo-plot",
        "Plot training curves from a run's trainer_state.json.",
        description=f"One run: train and eval curves into OUTPUT_DIR/{CURVES_FILE}. Several runs: their eval curves"
        " together into --out.",
    )
    parser.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR", help="a run's output_dir")
    parser.add_argument("--out", help=f"PNG to write (default: OUTPUT_DIR/{CURVES_FILE}, or compare.png)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.output_dirs) == 1:
        out = args.out or os.path.join(args.output_dirs[0], CURVES_FILE)
        panels = plot_run(args.output_dirs[0], out)
    else:
        out = args.out or "compare.png"
        panels = compare_runs(args.output_dirs, out)
    print(f"Wrote {out} ({len(panels)} panels: {', '.join(panels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
