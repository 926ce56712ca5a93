"""Peak memory and time of SimPO's log-probs + backward: plain full logits vs simpo/fused_logps.py (vs TRL's kernel).

One case = one sequence of T positions, all scored: hidden [1, T, H] (H = 256), a head weight [V, H], labels [T].
Each method computes log p(label) and the mean logit per token, then backward of their sum (gradients for the
hidden states and the head weight):
    plain  what plain_token_logps does to the model's output: logits = hidden @ W^T for every position, the scored
           rows gathered (a copy), upcast to fp32, log_softmax, gather
    fused  simpo.fused_logps.tiled_logps on the scored hidden states (--token-tile, --vocab-tile)
    trl    trl.kernels.ChunkedLogProbFunction (its torch fallback off GPU; chunk 32768, TRL's trainer default);
           skipped, with a note, when trl >= 1.15 is not importable
Each (method, V, T) runs in --rounds fresh subprocesses, the methods alternating in a rotating order. Peak memory is
the growth over what setup left allocated: on CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs
after setup) minus its RSS then, which counts every allocation torch makes, including the kernel's page-ins; on CUDA
torch.cuda.max_memory_allocated minus the memory allocated after setup. In each process the first run measures
memory and the next --repeats runs are timed; the table gives the median over all rounds and the ratio of the
fastest runs (this shared 2-core machine has slow spells that hit the GEMM-bound fused path harder).

    python benchmarks/logps_memory.py          # CPU fp32, V x T = {32000, 128256, 256000} x {1024, 2048}:
                                               # writes benchmarks/results/logps_memory_cpu.{json,md}
    python benchmarks/logps_memory.py --quick  # V = 32000, 128256 at T = 1024, 1 timed run; writes nothing
    python benchmarks/logps_memory.py --dtype bfloat16 --rounds 2 --out benchmarks/results/logps_memory_cpu_bf16
    python benchmarks/logps_memory.py --device cuda --dtype bfloat16   # writes logps_memory_cuda.{json,md}
"""

import argparse
import datetime
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpo.fused_logps import DEFAULT_TILES, tiled_logps
from simpo.logps import logps_from_logits

METHODS = ("plain", "fused", "trl")
TRL_CHUNK = 32768
TARGET_V, TARGET_MEMORY, TARGET_TIME = 128256, 0.1, 0.7  # the target on CPU


def trl_function():
    try:
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    except ImportError:
        return None
    return ChunkedLogProbFunction


def run_method(method: str, hidden, weight, labels, score_index, args):
    """log p(label) and mean logit per scored token, then backward; as the trainer would use them."""
    if method == "plain":
        logits = torch.nn.functional.linear(hidden, weight)  # [1, T, V], as the model's head returns them
        selected = logits.flatten(0, 1)[score_index].float()
        logps, means = logps_from_logits(selected, labels), selected.detach().mean(-1)
    elif method == "fused":
        scored = hidden.flatten(0, 1)[score_index]
        logps, means = tiled_logps(scored, weight, None, labels, token_tile=args.token_tile, vocab_tile=args.vocab_tile)
    else:
        scored = hidden.flatten(0, 1)[score_index]
        logps, _, _, means, _ = trl_function().apply(scored, weight, None, labels, 1.0, TRL_CHUNK, None, 1.0,
                                                     ("mean_logits",))
    logps.sum().backward()
    return means


def memory_probe(device: str):
    """(reset the peak, read growth since the reset) in MB."""
    if device == "cuda":
        def reset():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()

        return reset, lambda base: (torch.cuda.max_memory_allocated() - base) / 2**20

    def status(key: str) -> int:  # kB
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

    def reset():
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        return status("VmRSS")

    return reset, lambda base: (status("VmHWM") - base) / 1024


def worker(args) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    def make(vocab, tokens):
        hidden = torch.randn(1, tokens, args.hidden, device=device, dtype=dtype).requires_grad_()
        weight = (torch.randn(vocab, args.hidden, device=device, dtype=dtype) * 0.02).requires_grad_()
        labels = torch.randint(0, vocab, (tokens,), device=device)
        return hidden, weight, labels, torch.arange(tokens, device=device)

    run_method(args.worker, *make(1000, 16), args)  # thread pools, kernels, lazy inits: not the case's memory
    tensors = make(args.vocab, args.tokens)
    reset, peak = memory_probe(device)
    base = reset()
    run_method(args.worker, *tensors, args)
    sync()
    peak_mb = peak(base)
    walls, cpus = [], []
    for _ in range(args.repeats):
        for t in tensors[:2]:
            t.grad = None
        wall, cpu = time.perf_counter(), time.process_time()
        run_method(args.worker, *tensors, args)
        sync()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"method": args.worker, "V": args.vocab, "T": args.tokens, "peak_mb": round(peak_mb, 1),
            "walls": [round(t, 3) for t in walls], "cpus": [round(t, 3) for t in cpus]}


def run_worker(args, method: str, vocab: int, tokens: int) -> dict:
    """One fresh process measuring one (method, V, T): its memory run and timed runs."""
    cmd = [sys.executable, __file__, "--worker", method, "--vocab", str(vocab), "--tokens", str(tokens)]
    for flag in ("device", "dtype", "hidden", "token_tile", "vocab_tile", "repeats"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{method} V={vocab} T={tokens} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def combine_rounds(rounds: list[dict]) -> dict:
    """One method's rounds as one result: the largest peak, every timed run, and their medians."""
    walls = [t for r in rounds for t in r["walls"]]
    cpus = [t for r in rounds for t in r["cpus"]]
    return {"method": rounds[0]["method"], "V": rounds[0]["V"], "T": rounds[0]["T"],
            "peak_mb": max(r["peak_mb"] for r in rounds), "walls": walls,
            "wall_s": round(statistics.median(walls), 3), "cpu_s": round(statistics.median(cpus), 3)}


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def report(setup: dict, results: list[dict]) -> list[str]:
    by = {(r["method"], r["V"], r["T"]): r for r in results}
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    head = "| V | T | " + " | ".join(f"{m} peak MB" for m in methods)
    head += " | " + " | ".join(f"{m}/plain mem" for m in methods[1:])
    head += " | " + " | ".join(f"{m} s" for m in methods) + " | " + " | ".join(f"{m}/plain time" for m in methods[1:])
    head += " | " + " | ".join(f"{m}/plain best" for m in methods[1:])
    lines = [head + " |", "|" + "---|" * head.count("|")]
    for vocab, tokens in sorted({(r["V"], r["T"]) for r in results}):
        row = [by.get((m, vocab, tokens)) for m in methods]
        plain = row[0]
        cells = [f"{r['peak_mb']:.0f}" if r else "-" for r in row]
        cells += [f"{r['peak_mb'] / plain['peak_mb']:.3f}x" if r and plain else "-" for r in row[1:]]
        cells += [f"{r['wall_s']:.2f}" if r else "-" for r in row]
        cells += [f"{r['wall_s'] / plain['wall_s']:.2f}x" if r and plain else "-" for r in row[1:]]
        cells += [f"{min(r['walls']) / min(plain['walls']):.2f}x" if r and plain else "-" for r in row[1:]]
        lines.append(f"| {vocab} | {tokens} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--vocab", default="32000,128256,256000", help="comma-separated V")
    parser.add_argument("--tokens", default="1024,2048", help="comma-separated T")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--token-tile", type=int, default=None, help="default: simpo.fused_logps.DEFAULT_TILES")
    parser.add_argument("--vocab-tile", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the memory run, per round")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per method, alternating methods")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="V=32000,128256 at T=1024, 1 timed run, no files")
    parser.add_argument("--out", default=None, help="results stem (default benchmarks/results/logps_memory_<device>)")
    parser.add_argument("--render", metavar="STEM", help="rewrite STEM.md from STEM.json (after editing the report)")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        write_markdown(Path(args.render))
        return
    if args.worker:
        args.vocab, args.tokens = int(args.vocab), int(args.tokens)
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.vocab, args.tokens, args.repeats, args.rounds = "32000,128256", "1024", 1, 1
    methods = args.methods.split(",")
    if "trl" in methods and trl_function() is None:
        print("note: trl >= 1.15 (trl.kernels) is not importable: skipping TRL's kernel (pip install 'trl>=1.15').")
        methods.remove("trl")

    results = []
    for vocab in map(int, args.vocab.split(",")):
        for tokens in map(int, args.tokens.split(",")):
            # Rounds alternate the methods, and rotate which goes first, so that a slow spell of a shared machine,
            # or the kernel reclaiming the gigabytes the previous process freed, falls on all of them alike.
            runs = {m: [] for m in methods}
            for r in range(args.rounds):
                for method in methods[r % len(methods) :] + methods[: r % len(methods)]:
                    runs[method].append(run_worker(args, method, vocab, tokens))
            for rounds in runs.values():
                results.append(combine_rounds(rounds))
                print(json.dumps(results[-1]), flush=True)

    trl = trl_function()
    token_tile, vocab_tile = DEFAULT_TILES.get(args.device, DEFAULT_TILES["cuda"])
    setup = {
        "device": args.device, "dtype": args.dtype, "hidden": args.hidden, "token_tile": args.token_tile or token_tile,
        "vocab_tile": args.vocab_tile or vocab_tile, "rounds": args.rounds, "timed_runs_per_round": args.repeats,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {cpu_name()}" + (
            f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "trl": None if trl is None else __import__("trl").__version__,
    }
    if args.quick:
        print("\n".join(report(setup, results)))
        return
    stem = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"logps_memory_{args.device}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")
    write_markdown(stem)


def write_markdown(stem: Path) -> None:
    """stem.md from stem.json: the setup, what is measured, and the table."""
    data = json.loads(stem.with_suffix(".json").read_text())
    setup, lines = data["setup"], report(data["setup"], data["results"])
    header = [
        f"# SimPO log-probs + backward: peak memory and time ({setup['device']}, {setup['dtype']})", "",
        ", ".join(f"{k}: {v}" for k, v in setup.items()), "",
        "One sequence of T scored tokens, hidden H, head weight [V, H]; log p(label) and mean logit per token, then "
        "backward (gradients for hidden and weight).",
        "Peak MB: growth over setup (CPU: peak RSS; CUDA: max_memory_allocated); it includes the weight's gradient "
        "[V, H] that every method produces, the largest of the rounds.",
        f"Time: median wall seconds over {setup['rounds']} rounds (fresh processes, methods alternating in a rotating "
        f"order) of {setup['timed_runs_per_round']} runs after the measured one; 'best' compares the fastest runs.",
        f"The issue's target on CPU at V = {TARGET_V}: fused peak <= {TARGET_MEMORY}x plain, time <= {TARGET_TIME}x.",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(header + lines) + "\n")
    print("\n".join(lines) + f"\nwrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
