"""What the start-up self-check (simpo/train/self_check/) costs the README's tiny CPU run.

The tiny recipe (training_configs/tiny-simpo-cpu.yaml: the whole run, evaluations included) in fresh processes, in
three modes: self_check off (no check), always (checked every launch) and auto with the decision already on disk
(a relaunch: read from the cache). Per launch: the process's wall time, the Trainer's train_runtime, and the seconds
the check itself reports in the end summary (the self-check line). The modes rotate over --rounds rounds, so a shared
machine's slow spells fall on every mode alike; each row is the mode's median. The check's share is its own seconds
over the launch's wall time (the median of the launches' shares); the marginal cost is the median process time with the
check minus without (noisier: the
check's first forward also warms up what the first training step would otherwise warm up).

    python benchmarks/self_check_cost.py            # writes benchmarks/results/self_check_cpu.{json,md}
    python benchmarks/self_check_cost.py --quick    # 4 steps, no evaluation, 1 round: a smoke run
"""

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = {"off": "self_check: off", "always": "self_check: always (checked)", "auto": "self_check: auto (cached)"}
CHECK_LINE = re.compile(r"^  self-check\s+(\d+\.\d+) s: (.*)$", re.MULTILINE)


def launch(mode: str, out: Path, cache: Path, quick: bool) -> dict:
    args = [
        sys.executable,
        "scripts/run_simpo.py",
        "training_configs/tiny-simpo-cpu.yaml",
        f"--output_dir={out}",
        "--report_to=none",
        f"--self_check={mode}",
    ]
    if quick:
        args += ["--max_steps=4", "--eval_strategy=no", "--do_eval=false", "--eval_on_start=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SIMPO_SELF_CHECK_CACHE": str(cache)}
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise SystemExit(f"{mode}: exit {done.returncode}\n{done.stderr[-3000:]}")
    found = CHECK_LINE.search(done.stdout)
    runtime = json.loads((out / "train_results.json").read_text())["train_runtime"]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "train_runtime_s": float(runtime),
        "check_s": float(found[1]) if found else None,
        "check_how": found[2] if found else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "self_check_cpu"))
    options = parser.parse_args()
    rounds = 1 if options.quick else options.rounds
    runs = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "self_check.json"
        launch("always", Path(tmp) / "warm", cache, options.quick)  # fills the cache auto reads, warms the disk
        order = list(MODES)
        for r in range(rounds):
            for mode in order[r % len(order) :] + order[: r % len(order)]:
                runs[mode].append(launch(mode, Path(tmp) / f"{mode}{r}", cache, options.quick))
                print(mode, runs[mode][-1], flush=True)
    median = lambda mode, key: statistics.median(run[key] for run in runs[mode])
    rows = []
    for mode, label in MODES.items():
        check = [run["check_s"] or 0.0 for run in runs[mode]]
        rows.append(
            {
                "mode": label,
                "wall_s": median(mode, "wall_s"),
                "cpu_s": median(mode, "cpu_s"),
                "train_runtime_s": median(mode, "train_runtime_s"),
                "check_s": statistics.median(check),
                "check_share_of_wall": statistics.median(c / run["wall_s"] for c, run in zip(check, runs[mode])),
                "check_share_of_training": statistics.median(
                    c / run["train_runtime_s"] for c, run in zip(check, runs[mode])
                ),
                "marginal_cpu_s": median(mode, "cpu_s") - median("off", "cpu_s"),
                "how": runs[mode][0]["check_how"] or "no check",
                "rounds_wall_s": [round(run["wall_s"], 2) for run in runs[mode]],
            }
        )
    import torch
    import transformers

    meta = {
        "config": "training_configs/tiny-simpo-cpu.yaml" + (" (4 steps, no evaluation)" if options.quick else ""),
        "rounds": rounds,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    Path(options.out).with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=1))
    lines = [
        "# The start-up self-check's cost on the tiny CPU run",
        "",
        ", ".join(f"{k}: {v}" for k, v in meta.items()),
        "",
        "Each launch is a fresh process running the whole recipe. check s: what the check reports in the end summary;",
        "share: check s over the launch's wall time, and over the Trainer's train_runtime (which includes it; medians",
        "over the launches); marginal: median CPU seconds (user + system) of the launch minus the median without the",
        "check. A shared machine makes the wall times swing.",
        "",
        "| mode | wall s | CPU s | train_runtime s | check s | share of wall | share of train_runtime "
        "| marginal CPU s | what it did | wall s per round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['mode']} | {row['wall_s']:.1f} | {row['cpu_s']:.1f} | {row['train_runtime_s']:.1f} "
            f"| {row['check_s']:.2f} | {100 * row['check_share_of_wall']:.1f}% "
            f"| {100 * row['check_share_of_training']:.1f}% | {row['marginal_cpu_s']:+.1f} "
            f"| {row['how']} "
            f"| {', '.join(map(str, row['rounds_wall_s']))} |"
        )
    Path(options.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
