"""Training curves from a run's trainer_state (its log history), as PNG, headless (Agg canvas, no pyplot state).

What is drawn is the recipe's: `panels` maps a panel's title to the metric names it shows as logged in train entries
(the eval_ version of each goes on the same panel, dashed): simpo/train/reporting.py has SimPO's, simpo/sft/reporting.py
SFT's. plot_state and compare_histories return what they drew, {panel title: [(series name, steps, values), ...]},
so callers and tests can check the data rather than pixels. The simpo-plot command is simpo/evaluation/curves.py.
"""

import json
import logging
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simpo.errors import DataError

logger = logging.getLogger(__name__)
CURVES_FILE = "training_curves.png"


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


def plot_state(state: dict, panels: dict[str, list[str]], out: str, title: str, where: str) -> dict:
    """Draw one run's curves (its trainer state) into `out`; return what was drawn. Each panel holds the train
    series and the eval_ series of its metrics; panels with no data are left out. `where` names the run in errors."""
    history = state["log_history"]
    drawn = {}
    for panel, keys in panels.items():
        lines = []
        for key in keys:
            for name in (key, "eval_" + key):
                xs, ys = series(history, name)
                if xs:
                    lines.append((name, xs, ys))
        if lines:
            drawn[panel] = lines
    if not drawn:
        every = state.get("logging_steps")
        raise DataError(
            f"{where}: the log history has no metric to plot: nothing was logged in its"
            f" {state.get('global_step')} steps (a log every {every} steps, no evaluation). Set"
            " logging_steps below the number of steps, or evaluate (eval_strategy), for curves."
        )
    draw(drawn, out, title)
    return drawn


def compare_histories(histories: dict[str, list[dict]], panels: dict[str, str], out: str) -> dict:
    """Eval curves of several runs (a sweep), {run label: log history}, on shared panels ({title: eval metric}), one
    line per run; return what was drawn."""
    drawn = {}
    for panel, key in panels.items():
        lines = [(label, *series(history, key)) for label, history in histories.items()]
        lines = [line for line in lines if line[1]]
        if lines:
            drawn[panel] = lines
    if not drawn:
        raise DataError("None of these runs logged an evaluation: set eval_strategy (and an eval split).")
    draw(drawn, out, f"eval curves of {len(histories)} runs", eval_dashed=False)
    return drawn


def plot_folder(output_dir: str, panels: dict[str, list[str]], kind: str) -> str:
    """output_dir/training_curves.png from output_dir/trainer_state.json; returns the path."""
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        state = json.load(f)
    path = os.path.join(output_dir, CURVES_FILE)
    plot_state(state, panels, path, f"{kind} run: {os.path.abspath(output_dir)}", output_dir)
    return path


def plot_curves(trainer, panels: dict[str, list[str]], kind: str) -> str | None:
    """At the end of training, on the main process, draw output_dir/training_curves.png from the trainer_state.json
    written there (`kind`, e.g. "SimPO", names the run in the title); a failure warns and training still succeeds."""
    if not trainer.accelerator.is_main_process:
        return None
    output_dir = trainer.args.output_dir
    try:
        return plot_folder(output_dir, panels, kind)
    except DataError as error:  # nothing to plot: simpo-plot would say the same
        logger.warning("No training curves: %s", error)
    except Exception as error:  # plotting must never fail a finished run
        logger.warning(
            "Could not plot the training curves (%s: %s); try simpo-plot %s", type(error).__name__, error, output_dir
        )
    return None
