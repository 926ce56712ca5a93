"""The SimPO paper's chain on a task a tiny model can learn, with an exactly checkable answer, in one command:

    python scripts/run_tiny_paper.py [--seeds 1 2 3] [--learning-rates 1e-4 3e-4 1e-3] [--quick]
    python scripts/run_tiny_paper.py --publish      (benchmarks/results/tiny_paper.* and the README's table)

Task: reverse a short lowercase word (data/tiny-paper, built by scripts/build_tiny_paper.py). 70% of the SFT
demonstrations make one systematic mistake (the last two letters swapped), so the SFT model's greedy answers make it
too. Per seed, every stage runs through the package's own commands, as subprocesses:

  1. a ~1M-parameter character-level Llama, random init   scripts/build_tiny_paper.py --model
  2. SFT on the demonstrations                            scripts/run_sft.py training_configs/tiny-paper-sft.yaml
  3. on-policy samples from the SFT model (K seeds)       simpo-generate onpolicy_configs/tiny-paper.yaml
  4. scores from the task's function (exact match)        simpo-annotate (reward_function: ...:exact_match)
  5. best vs worst reply per prompt                       simpo-binarise
  6. SimPO from the SFT model on those pairs              scripts/run_simpo.py training_configs/tiny-paper-simpo.yaml
  7. greedy answers of both models to the held-out prompts, judged by the same function (in this script)

The first seed also trains SimPO at every --learning-rates value (the same SFT model and pairs). Writes
OUTPUT/report.json, report.md, report.png (the SimPO run's curves next to the accuracy bars),
answers/{sft,simpo}.jsonl (the first seed's), and per seed OUTPUT/seed<N>/ with every stage's output and log. A
seed's folder is started afresh on every run (the script removes it first, and refuses a folder holding anything
it did not write), so a second run in the same checkout repeats the first.

--publish runs the published setting (PAPER: seeds 1 2 3, learning rates 1e-4 3e-4 1e-3) and writes the report to
benchmarks/results/tiny_paper.{json,md}, with the git commit and library versions that produced it, and the
README's table from it (tests/test_tiny_paper_results.py checks that the README, the results file and its
rendering agree).
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SFT_CONFIG = "training_configs/tiny-paper-sft.yaml"
SIMPO_CONFIG = "training_configs/tiny-paper-simpo.yaml"
PIPELINE = "onpolicy_configs/tiny-paper.yaml"
HELDOUT = "data/tiny-paper/heldout.jsonl"
REWARD = "simpo.pipeline.rewards:exact_match"
SIMPO_LR = 1e-4  # training_configs/tiny-paper-simpo.yaml's learning_rate
# The published setting (benchmarks/results/tiny_paper.md, the README's table): rates around the config's, upward.
PAPER = {"seeds": [1, 2, 3], "learning_rates": [1e-4, 3e-4, 1e-3]}
PUBLISH_COMMAND = "python scripts/run_tiny_paper.py --publish"
RESULTS = "benchmarks/results/tiny_paper"
README_START = (
    "<!-- tiny paper: written by `python scripts/run_tiny_paper.py --publish` from benchmarks/results/tiny_paper.json;"
    " do not edit -->"
)
README_END = "<!-- end of the tiny paper table -->"
LIBRARIES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "safetensors", "trl", "peft", "numpy")
# What the chain writes into a seed's folder: anything else there is not the script's to delete.
SEED_FOLDER = re.compile(r"(base|sft|onpolicy|answers|simpo|simpo-lr[0-9.e+-]+|[a-z0-9.e+-]+\.log)")
QUICK = {  # the CI test's setting: two thirds of the SFT steps, 200 held-out prompts
    "sft": ["--max_steps=250"],
    "pipeline": [],
    "simpo": [],
    "heldout": 200,
}


def run(stage: str, cmd: list[str], folder: Path, env: dict) -> float:
    """One stage as a subprocess, its output in folder/<stage>.log; the seconds it took."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{stage}.log"
    print(f"[{stage}] {' '.join(cmd)}", flush=True)
    start = time.time()
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{stage} failed (exit {done.returncode}); its output: {log}\n{log.read_text()[-3000:]}")
    return time.time() - start


def fresh_folder(folder: Path) -> None:
    """Remove a seed's folder from an earlier run, so every stage starts afresh in a folder the chain owns; refuse
    one holding anything the chain does not write (it is not the script's to delete)."""
    if not folder.exists():
        return
    foreign = sorted(name for name in os.listdir(folder) if not SEED_FOLDER.fullmatch(name))
    if foreign:
        sys.exit(
            f"{folder} holds files this script did not write ({', '.join(foreign[:5])}); it removes a seed's folder"
            " before running it again: move them, or choose another --output-dir."
        )
    shutil.rmtree(folder)


def rel(path) -> str:
    return os.path.relpath(path, ROOT)


def read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def greedy_answers(model_dir: Path, rows: list[dict], max_tokens: int = 12, batch_size: int = 256) -> list[str]:
    """Greedy replies, batched, from the ids training feeds the model (its tokenizer and chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simpo.data.tokenization import generation_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = tokenizer.eos_token_id
    answers = []
    for start in range(0, len(rows), batch_size):
        prompts = [
            generation_prompt_ids([{"role": "user", "content": r["prompt"]}], tokenizer, True)
            for r in rows[start : start + batch_size]
        ]
        width = max(map(len, prompts))
        input_ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=False,
                max_new_tokens=max_tokens,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        for row in out[:, width:].tolist():
            row = row[: row.index(eos)] if eos in row else row
            answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return answers


def judge(model_dir: Path, rows: list[dict], path: Path) -> list[int]:
    """Each held-out prompt's greedy answer, judged by the pipeline's reward function; written to `path`."""
    from simpo.pipeline.rewards import load_reward_function

    score = load_reward_function(REWARD)
    answers = greedy_answers(model_dir, rows)
    correct = [int(score([{"role": "user", "content": r["prompt"]}], a, r) == 1.0) for r, a in zip(rows, answers)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r, a, c in zip(rows, answers, correct):
            f.write(
                json.dumps(
                    {
                        "prompt_id": r["prompt_id"],
                        "prompt": r["prompt"],
                        "answer": a,
                        "reference": r["answer"],
                        "correct": bool(c),
                    }
                )
                + "\n"
            )
    return correct


def bootstrap(sft: list[int], simpo: list[int], resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap 95% interval of accuracy(simpo) - accuracy(sft), resampling held-out prompts."""
    import numpy as np

    diff = np.asarray(simpo, dtype=float) - np.asarray(sft, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def comparison(sft: list[int], simpo: list[int]) -> dict:
    low, high = bootstrap(sft, simpo)
    acc = lambda xs: sum(xs) / len(xs)
    return {
        "sft_accuracy": acc(sft),
        "simpo_accuracy": acc(simpo),
        "difference": acc(simpo) - acc(sft),
        "ci95": [low, high],
    }


def chain(seed: int, learning_rates: list[float], args, env: dict, heldout: list[dict]) -> dict:
    """Stages 1-7 for one seed; SimPO at each learning rate (the first one is the main run)."""
    py, out = sys.executable, args.output_dir / f"seed{seed}"
    quick = QUICK if args.quick else {"sft": [], "pipeline": [], "simpo": []}
    base, sft, onpolicy = out / "base", out / "sft", out / "onpolicy"
    fresh_folder(out)
    sample_seeds = [seed * 100 + k for k in range(args.samples)]
    times = {}
    times["build"] = run(
        "build", [py, "scripts/build_tiny_paper.py", "--model", rel(base), "--model_seed", str(seed)], out, env
    )
    times["sft"] = run(
        "sft",
        [
            py,
            "scripts/run_sft.py",
            SFT_CONFIG,
            f"--model_name_or_path={base}",
            f"--output_dir={sft}",
            f"--seed={seed}",
            *quick["sft"],
        ],
        out,
        env,
    )
    pipeline = [
        PIPELINE,
        f"--model_name_or_path={sft}",
        f"--output_dir={onpolicy}",
        f"--seeds={json.dumps(sample_seeds)}",
        *quick["pipeline"],
    ]
    for stage in ("generate", "annotate", "binarise"):
        times[stage] = run(stage, [py, "-m", f"simpo.pipeline.{stage}", *pipeline], out, env)
    summary = json.loads((onpolicy / "dataset" / "summary.json").read_text())
    start = time.time()
    sft_correct = judge(sft, heldout, out / "answers" / "sft.jsonl")
    times["answers_sft"] = time.time() - start
    runs = {}
    for lr in learning_rates:
        folder = out / ("simpo" if lr == learning_rates[0] else f"simpo-lr{lr:g}")
        times[f"simpo_lr{lr:g}"] = run(
            f"simpo-lr{lr:g}",
            [
                py,
                "scripts/run_simpo.py",
                SIMPO_CONFIG,
                f"--model_name_or_path={sft}",
                f"--output_dir={folder}",
                f"--dataset_mixer={{{onpolicy / 'dataset'}: 1.0}}",
                f"--seed={seed}",
                f"--learning_rate={lr}",
                *quick["simpo"],
            ],
            out,
            env,
        )
        start = time.time()
        simpo_correct = judge(folder, heldout, out / "answers" / f"simpo-lr{lr:g}.jsonl")
        times[f"answers_simpo_lr{lr:g}"] = time.time() - start
        runs[f"{lr:g}"] = {
            **comparison(sft_correct, simpo_correct),
            "final_eval": final_eval(folder),
            "output_dir": rel(folder),
        }
    main_lr = f"{learning_rates[0]:g}"
    return {
        **runs[main_lr],
        "learning_rate": learning_rates[0],
        "runs": runs,
        "times_s": times,
        "main_chain_s": sum(v for k, v in times.items() if "lr" not in k or k.endswith(f"lr{main_lr}")),
        "pairs": {side: summary[side]["pairs"] for side in ("train", "test")},
        "pairs_dropped": {side: summary[side]["dropped"] for side in ("train", "test")},
        "files": {
            "base model": rel(base),
            "sft data": "data/tiny-paper/sft",
            "sft model": rel(sft),
            "preference prompts": "data/tiny-paper/prompts",
            "samples": rel((onpolicy / "generations")),
            "scores": rel((onpolicy / "annotations")),
            "pairs": rel((onpolicy / "dataset")),
            "simpo model": runs[main_lr]["output_dir"],
            "held-out prompts": HELDOUT,
            "answers": rel((out / "answers")),
        },
    }


def final_eval(folder: Path) -> dict:
    """The SimPO run's own held-out metrics at its last evaluation (trainer_state.json)."""
    state = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    last = [entry for entry in state if "eval_rewards/accuracies" in entry][-1]
    return {key: last[key] for key in ("step", "eval_rewards/accuracies", "eval_logps/chosen")}


def provenance() -> dict:
    """What produced the report: the git commit (and any tracked file changed since it), the libraries, the
    machine and its load."""
    from importlib.metadata import PackageNotFoundError, version

    def git(*args) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.rstrip()  # porcelain lines start with a status column that may be a space

    versions = {"python": platform.python_version()}
    for name in ("simpo", *LIBRARIES):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    changed = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": [line[3:] for line in changed.splitlines()] if changed else [],
        "versions": versions,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def plot(report: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    first = report["seeds"][str(report["settings"]["seeds"][0])]
    state = json.loads((ROOT / first["output_dir"] / "trainer_state.json").read_text())["log_history"]
    figure = Figure(figsize=(15, 4))
    panels = figure.subplots(1, 4)
    for axes, keys, title in (
        (panels[0], ["loss", "eval_loss"], "SimPO loss"),
        (panels[1], ["rewards/margins", "eval_rewards/margins"], "reward margin"),
        (panels[2], ["rewards/accuracies", "eval_rewards/accuracies"], "pair accuracy"),
    ):
        for key in keys:
            points = [(e["step"], e[key]) for e in state if key in e]
            if points:
                axes.plot(*zip(*points), "--" if key.startswith("eval") else "-", label=key)
        axes.set_title(f"{title} (seed {report['settings']['seeds'][0]})")
        axes.set_xlabel("step")
        axes.legend(fontsize=7)
    bars = panels[3]
    seeds = [str(s) for s in report["settings"]["seeds"]]
    x = range(len(seeds))
    bars.bar([i - 0.2 for i in x], [report["seeds"][s]["sft_accuracy"] for s in seeds], 0.4, label="SFT")
    bars.bar([i + 0.2 for i in x], [report["seeds"][s]["simpo_accuracy"] for s in seeds], 0.4, label="SimPO")
    bars.set_xticks(list(x), [f"seed {s}" for s in seeds])
    bars.set_ylim(0, 1)
    bars.set_title(f"held-out greedy accuracy ({report['heldout_prompts']} prompts)")
    bars.legend(fontsize=7)
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(path)


def rate(lr) -> str:
    """A learning rate as the docs write it: 1e-4, 3e-4, 2.5e-5."""
    mantissa, exponent = f"{float(lr):.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def prose(text: str) -> str:
    """A paragraph wrapped at the repository's 120 columns."""
    return textwrap.fill(text, width=120, break_long_words=False, break_on_hyphens=False)


def command_line(settings: dict) -> str:
    """The command that runs these settings (the published one as PUBLISH_COMMAND)."""
    if not settings["quick"] and {k: settings[k] for k in PAPER} == PAPER:
        return PUBLISH_COMMAND
    words = ["python scripts/run_tiny_paper.py", "--seeds", *map(str, settings["seeds"])]
    words += ["--learning-rates", *map(rate, settings["learning_rates"])]
    return " ".join(words + (["--quick"] if settings["quick"] else []))


def markdown(report: dict) -> str:
    """report.md (and benchmarks/results/tiny_paper.md): the tables, what produced them, where the files are."""
    s, made = report["settings"], report["produced_by"]
    first = str(s["seeds"][0])
    lines = [
        "# Tiny paper: SFT, on-policy samples, a verifiable reward, SimPO",
        "",
        prose(
            f"`{command_line(s)}` (docs/tiny-paper.md), offline, {s['threads']} torch thread(s) per stage. Task:"
            " reverse a short lowercase word; 70% of the SFT demonstrations swap the answer's last two letters. The"
            f" model is a 0.89M-parameter character-level Llama. {report['heldout_prompts']} held-out prompts"
            f" ({HELDOUT}), greedy answers judged by `{REWARD}`. The raw report is the .json beside this file."
        ),
        "",
        "| seed | SFT accuracy | SimPO accuracy | difference | bootstrap 95% CI | pairs (train) | chain time |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, r in report["seeds"].items():
        lines.append(
            f"| {seed} | {r['sft_accuracy']:.3f} | {r['simpo_accuracy']:.3f} | {r['difference']:+.3f} |"
            f" [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {r['pairs']['train']} |"
            f" {r['main_chain_s']:.0f} s |"
        )
    main = report["seeds"][first]
    lines += [
        "",
        prose(
            f"SimPO's learning rate, seed {first}: every row starts from the same SFT model (accuracy"
            f" {main['sft_accuracy']:.3f}) and trains on the same {main['pairs']['train']} pairs; the main runs use"
            f" {rate(s['learning_rates'][0])}. The last two columns are the SimPO run's own metrics on its held-out"
            " pairs at its last evaluation."
        ),
        "",
        "| learning rate | SimPO accuracy | difference | bootstrap 95% CI | eval_rewards/accuracies"
        " | eval_logps/chosen |",
        "|---|---|---|---|---|---|",
    ]
    for lr, r in main["runs"].items():
        ev = r["final_eval"]
        lines.append(
            f"| {rate(lr)} | {r['simpo_accuracy']:.3f} | {r['difference']:+.3f} |"
            f" [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] | {ev['eval_rewards/accuracies']:.3f} |"
            f" {ev['eval_logps/chosen']:.3f} |"
        )
    versions = ", ".join(f"{name} {v}" for name, v in made["versions"].items() if v)
    changes = made["uncommitted_changes"]
    lines += [
        "",
        prose(
            f"Produced by commit `{made['commit']}`"
            + (f" with uncommitted changes to {', '.join(changes)}" if changes else "")
            + f", on {made['machine']} (load average {made['load_average'][0]} at the start, {made['load_end']} at"
            f" the end): {versions}."
        ),
        "",
        f"Data and outputs of seed {first}:",
        "",
    ]
    lines += [f"- {name}: `{value}`" for name, value in main["files"].items()]
    lines += [
        "",
        prose(
            f"Total time: {report['total_s']:.0f} s. Answers: `answers/sft.jsonl`, `answers/simpo.jsonl`"
            f" (seed {first}); curves and bars: `report.png`."
        ),
        "",
    ]
    return "\n".join(lines)


def listing(items) -> str:
    """a, b and c."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def gain(r: dict) -> str:
    points = round(100 * r["difference"])
    said = f"gains {points} points" if points > 0 else f"loses {-points} points" if points < 0 else "gains nothing"
    low, high = r["ci95"]
    return said + (f" (95% interval [{low:+.3f}, {high:+.3f}], which includes 0)" if low <= 0 <= high else "")


def readme_table(report: dict) -> str:
    """The README's block: the seeds' table and the learning-rate sentence, from the report."""
    s, made = report["settings"], report["produced_by"]
    lines = [
        README_START,
        "| seed | SFT | SimPO | difference (95% bootstrap interval) |",
        "|---|---|---|---|",
    ]
    for seed, r in report["seeds"].items():
        lines.append(
            f"| {seed} | {r['sft_accuracy']:.3f} | {r['simpo_accuracy']:.3f} |"
            f" {r['difference']:+.3f} [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}] |"
        )
    first = str(s["seeds"][0])
    runs = report["seeds"][first]["runs"]
    said = listing(f"{rate(lr)} {gain(r)}" for lr, r in runs.items())
    pair_accuracy = listing(f"{r['final_eval']['eval_rewards/accuracies']:.2f}" for r in runs.values())
    logps = listing(f"{r['final_eval']['eval_logps/chosen']:.2f}" for r in runs.values())
    lines += [
        "",
        prose(
            f"The learning rate decides the outcome: on seed {first}, {said}. SimPO's own held-out pair accuracy"
            f" (`eval_rewards/accuracies`) at the end is {pair_accuracy} at those rates, and its `eval_logps/chosen`"
            f" {logps} per token. Commit `{made['commit'][:10]}`, torch {made['versions']['torch']}, transformers"
            f" {made['versions']['transformers']}; `{PUBLISH_COMMAND}` reruns it and rewrites this table and the"
            " results file."
        ),
        README_END,
    ]
    return "\n".join(lines)


def publish(report: dict, root: Path = ROOT) -> None:
    """The report as benchmarks/results/tiny_paper.{json,md}, and the README's table from it."""
    results = root / RESULTS
    results.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    results.with_suffix(".md").write_text(markdown(report))
    readme = (root / "README.md").read_text()
    start, end = readme.index(README_START), readme.index(README_END) + len(README_END)
    (root / "README.md").write_text(readme[:start] + readme_table(report) + readme[end:])
    print(f"published: {rel(results.with_suffix('.md'))}, {rel(results.with_suffix('.json'))}, README.md")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--learning-rates",
        type=float,
        nargs="+",
        default=[SIMPO_LR],
        help="SimPO learning rates; the first is every seed's main run, all run on the first seed",
    )
    parser.add_argument("--samples", type=int, default=4, help="on-policy samples per prompt")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per stage (1: on a shared machine two threads per process lose more to"
        " waiting than they gain)",
    )
    parser.add_argument("--quick", action="store_true", help="shorter SFT, fewer prompts (the CI test)")
    parser.add_argument(
        "--publish",
        action="store_true",
        help=f"run the published setting (seeds {' '.join(map(str, PAPER['seeds']))}, learning rates"
        f" {' '.join(f'{lr:g}' for lr in PAPER['learning_rates'])}) and write {RESULTS}.{{json,md}} and the"
        " README's table",
    )
    parser.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "tiny-paper")
    args = parser.parse_args(argv)
    if args.publish:
        changed = [
            key
            for key in ("seeds", "learning_rates", "samples", "quick")
            if getattr(args, key) != parser.get_default(key)
        ]
        if changed:
            parser.error(f"--publish runs the published setting; leave out {', '.join(changed)}")
        args.seeds, args.learning_rates = PAPER["seeds"], PAPER["learning_rates"]
    args.output_dir = args.output_dir.resolve()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    import torch

    torch.set_num_threads(args.threads)
    heldout = read_jsonl(ROOT / HELDOUT)[: QUICK["heldout"] if args.quick else None]
    start = time.time()
    report = {
        "settings": {
            "seeds": args.seeds,
            "learning_rates": args.learning_rates,
            "samples": args.samples,
            "quick": args.quick,
            "threads": args.threads,
            "reward_function": REWARD,
        },
        "produced_by": provenance(),
        "heldout_prompts": len(heldout),
        "seeds": {},
    }
    for i, seed in enumerate(args.seeds):
        rates = args.learning_rates if i == 0 else args.learning_rates[:1]
        report["seeds"][str(seed)] = result = chain(seed, rates, args, env, heldout)
        print(
            f"seed {seed}: SFT {result['sft_accuracy']:.3f} -> SimPO {result['simpo_accuracy']:.3f}"
            f" ({result['difference']:+.3f}, 95% CI [{result['ci95'][0]:+.3f}, {result['ci95'][1]:+.3f}])",
            flush=True,
        )
    report["total_s"] = time.time() - start
    report["produced_by"]["load_end"] = round(os.getloadavg()[0], 1)
    out = args.output_dir
    first = out / f"seed{args.seeds[0]}" / "answers"
    (out / "answers").mkdir(parents=True, exist_ok=True)
    (out / "answers" / "sft.jsonl").write_text((first / "sft.jsonl").read_text())
    (out / "answers" / "simpo.jsonl").write_text((first / f"simpo-lr{args.learning_rates[0]:g}.jsonl").read_text())
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "report.png")
    print(f"report: {out / 'report.md'}")
    if args.publish:
        publish(report)
    return report


if __name__ == "__main__":
    main()
