"""Elastic resume on GPUs (docs/elastic-resume.md): per launcher, an uninterrupted 2-process run of the tiny SimPO
config, and the same run stopped at step 1 on 2 processes (SIGTERM's path: checkpoint, exit), resumed on 1 process
and stopped at step 3, resumed on 2 processes to step 4. A row per launcher: whether every optimizer step trained on
the uninterrupted run's pairs, the largest weight difference, and ok. FSDP2 is the launcher CPU tests cannot run.

    python benchmarks/elastic_check.py RESULTS_DIR [fsdp2 ddp zero3]

Needs 2 GPUs; with fewer it writes the rows as skipped and exits 0. The launches are tests/helpers/dist_train.py's
(its probe logs each step's pairs). fp32 throughout, so the tolerance is the CPU tests': rtol 1e-4, atol 1e-5.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {
    "fsdp2": "accelerate_configs/fsdp.yaml",
    "ddp": "accelerate_configs/multi_gpu.yaml",
    "zero3": "accelerate_configs/deepspeed_zero3.yaml",
}
TRAIN = [
    "training_configs/tiny-simpo-cpu.yaml",
    "--max_steps=4",
    "--eval_strategy=no",
    "--eval_on_start=false",
    "--do_eval=false",
    "--report_to=none",
    "--save_strategy=steps",
    "--save_steps=100",
    "--logging_steps=1",
    "--use_cpu=false",
    "--bf16=false",
    "--torch_dtype=float32",
]
LEGS = ((2, 1), (1, 3), (2, None))
TIMEOUT_S = int(os.environ.get("RUN_TIMEOUT_S", "200"))


def launch(config: str, processes: int, probe: Path, out: Path, stop_at: int | None) -> str:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config,
        "--num_processes",
        str(processes),
        "--mixed_precision",
        "no",
        "--main_process_port",
        "0",
        "tests/helpers/dist_train.py",
        str(probe),
        *TRAIN,
        f"--output_dir={out}",
    ]
    env = {**os.environ, "PROBE_STOP_AT_STEP": str(stop_at or ""), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return run.stdout + run.stderr


def pairs_per_step(*probes: Path) -> dict[int, list[str]]:
    steps = {}
    for probe in probes:
        for path in probe.glob("rank*.json"):
            for step, pairs in json.loads(path.read_text())["pairs"].items():
                steps.setdefault(int(step), []).extend(pairs)
    return {step: sorted(pairs) for step, pairs in sorted(steps.items())}


def check(name: str, work: Path) -> dict:
    start, config = time.time(), CONFIGS[name]
    row = {"launcher": name, "config": config}
    launch(config, 2, work / "p_ref", work / "ref", None)
    probes = []
    for n, (processes, stop_at) in enumerate(LEGS):
        probes.append(work / f"p{n}")
        output = launch(config, processes, probes[-1], work / "run", stop_at)
        if n == 1:
            row["resume_said"] = "resumed from checkpoint-1 written by 2 processes, now 1" in output
    try:
        reference = load_file(work / "p_ref" / "rank0.safetensors")
        resumed = load_file(probes[-1] / "rank0.safetensors")
    except OSError as error:
        return {**row, "ok": False, "error": str(error), "seconds": round(time.time() - start)}
    row["same_pairs_per_step"] = pairs_per_step(*probes) == pairs_per_step(work / "p_ref") != {}
    row["max_abs_weight_diff"] = max((reference[k] - resumed[k]).abs().max().item() for k in reference)
    row["weights_close"] = all(torch.allclose(resumed[k], reference[k], rtol=1e-4, atol=1e-5) for k in reference)
    row["ok"] = row["same_pairs_per_step"] and row["weights_close"] and row["resume_said"]
    row["seconds"] = round(time.time() - start)
    return row


def main() -> int:
    results, names = Path(sys.argv[1]), sys.argv[2:] or list(CONFIGS)
    results.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count()
    rows = []
    for name in names:
        if gpus < 2:
            rows.append({"launcher": name, "ok": None, "skipped": f"needs 2 GPUs, {gpus} visible"})
            continue
        with tempfile.TemporaryDirectory() as work:
            rows.append(check(name, Path(work)))
        print(json.dumps(rows[-1]), flush=True)
    (results / "elastic_check.json").write_text(json.dumps(rows, indent=1))
    lines = ["| launcher | same pairs per step | max weight diff | ok |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {r['launcher']} | {r.get('same_pairs_per_step', '-')} | {r.get('max_abs_weight_diff', '-')} | "
        f"{r.get('skipped') or r['ok']} |"
        for r in rows
    ]
    (results / "elastic_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["ok"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
