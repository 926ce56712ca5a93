"""simpo-plot: a run's training curves, or several runs' evaluation curves (a sweep), as PNG.

    simpo-plot OUTPUT_DIR                      # -> OUTPUT_DIR/training_curves.png (train and eval on the same panels)
    simpo-plot RUN_A RUN_B ... --out cmp.png   # several runs (a sweep): their eval curves on shared panels

A run still going is plotted from its newest complete checkpoint. The panels are the recipe's: SFT's for a run that
logged SFT's metrics (simpo/sft/reporting.py), else SimPO's (simpo/train/reporting.py); the drawing is
simpo/reporting/curves.py.
"""

import json
import os
import sys

from simpo.config.parser import CommandParser
from simpo.errors import DataError
from simpo.reporting.curves import CURVES_FILE, compare_histories, plot_state
from simpo.run.checkpoints import last_complete_checkpoint
from simpo.run.commands import report_input_errors
from simpo.sft.reporting import SFT_PANELS
from simpo.train.reporting import COMPARE_PANELS, RUN_PANELS


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


def plot_run(output_dir: str, out: str | None = None) -> dict:
    """Draw one run's curves into out (default output_dir/training_curves.png); return what was drawn."""
    state = load_state(output_dir)
    sft = any("mean_token_accuracy" in h for h in state["log_history"])
    title = f"{'SFT' if sft else 'SimPO'} run: {os.path.abspath(output_dir)}"
    out = out or os.path.join(output_dir, CURVES_FILE)
    return plot_state(state, SFT_PANELS if sft else RUN_PANELS, out, title, output_dir)


def run_labels(output_dirs: list[str]) -> list[str]:
    """Folder names, or whole paths where two runs share a folder name."""
    names = [os.path.basename(os.path.normpath(d)) for d in output_dirs]
    return names if len(set(names)) == len(names) else [os.path.normpath(d) for d in output_dirs]


def compare_runs(output_dirs: list[str], out: str) -> dict:
    """Eval curves of several runs (a sweep) on shared panels, one line per run; return what was drawn."""
    histories = {label: load_state(d)["log_history"] for label, d in zip(run_labels(output_dirs), output_dirs)}
    return compare_histories(histories, COMPARE_PANELS, out)


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
