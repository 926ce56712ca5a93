"""Peak memory, time and gradient error of SimPO's loss + backward through the LM head: the plain full logits against
simpo's tiled paths (torch tiles, Triton kernels) and TRL's and Liger's kernels.

One case = H:V:PxT: P pairs, 2P sequences of T positions whose first --prompt fraction is the prompt (not scored;
CPU default 0, CUDA default 0.5) and the rest the response; hidden [2P, T, H] (what the decoder returns), a head
weight [V, H], labels [2P, T]. Each method computes the per-token log-probs and the mean logits of the N scored
tokens, the SimPO loss (sigmoid, beta 2, gamma 1) on the sequences' mean log-probs, then backward
(gradients for the hidden states and the head weight):
    plain   what plain_token_logps does to the model's output: logits = hidden @ W^T at every position, the scored
            rows gathered (a copy), upcast to fp32, log_softmax, gather
    fused   simpo.kernels.tiled_logps(kernel="torch") on the scored hidden states (--token-tile, --vocab-tile)
    triton  simpo.kernels.tiled_logps(kernel="triton"): simpo/kernels/triton_tiles.py, tiles chosen by timing on the
            first call (--token-tile, --vocab-tile force them); CUDA only, skipped with a note on CPU
    trl     trl.kernels.ChunkedLogProbFunction (its torch fallback off GPU; chunk 32768, TRL's trainer default);
            skipped, with a note, when trl >= 1.15 is not importable
    liger   liger_kernel.chunked_loss.LigerFusedLinearSimPOLoss (the same loss, computed inside from all positions
            with the prompt's labels -100; torch.compile on CUDA, its default); skipped, with a note, when
            liger-kernel is not importable
Each (method, case) runs in --rounds fresh subprocesses, the methods alternating in a rotating order. In each process
--warmups runs on the case's shapes come first (GPU: compilation, autotuning, the Triton path's tile timing), then
one run measures memory and --repeats runs are timed. Peak memory is the growth over what setup left allocated: on
CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs after setup) minus its RSS then, which counts
every allocation torch makes; on CUDA torch.cuda.max_memory_allocated minus the memory allocated after setup. The
gradient error (first round) is |g - g_ref| / |g_ref| for the hidden states' and the weight's gradients, g_ref from
the plain path in fp32 on the same inputs. The table gives the median time over all rounds and the ratio of the
fastest runs.

    python benchmarks/logps_memory.py          # CPU fp32, H 256, V = {32000, 128256, 256000} x 1 pair x {512, 1024}:
                                               # writes benchmarks/results/logps_memory_cpu.{json,md}
    python benchmarks/logps_memory.py --quick  # V = 32000, 128256 at 1 pair x 512, 1 timed run; writes nothing
    python benchmarks/logps_memory.py --dtype bfloat16 --rounds 2 --out benchmarks/results/logps_memory_cpu_bf16
    python benchmarks/logps_memory.py --device cuda --dtype bfloat16
        # the GPU run: Llama-3's head (H 4096, V 128256) at 4 pairs x 1024 and 4 x 2048 positions, Gemma-2's
        # (H 3584, V 256000) at 2 x 2048, half of each sequence prompt; all five methods, 15 processes (not yet
        # run: a few minutes expected, mostly start-up, compilation and autotuning); writes
        # benchmarks/results/logps_memory_cuda.{json,md}
"""

import argparse
import datetime
import gc
import importlib.metadata
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

from simpo.kernels import tiled_logps
from simpo.kernels.common import DEFAULT_TILES
from simpo.train.logps import logps_from_logits
from simpo.train.loss import average_logps, simpo_loss

METHODS = ("plain", "fused", "triton", "trl", "liger")
TRL_CHUNK = 32768
BETA, GAMMA = 2.0, 1.0  # gamma_beta_ratio 0.5
CPU_CASES = ",".join(f"256:{v}:1x{t}" for v in (32000, 128256, 256000) for t in (512, 1024))
CUDA_CASES = "4096:128256:4x1024,4096:128256:4x2048,3584:256000:2x2048"  # Llama-3's head, Gemma-2's
TARGETS = {
    "cpu": "fused peak <= 0.1x plain, time <= 0.7x at V = 128256",
    "cuda": "triton time <= 0.65x plain and peak <= 0.1x at 4096:128256:4x2048, gradient error <= plain's, "
    "Gemma-2's head faster than trl",
}


def parse_case(text: str) -> dict:
    hidden, vocab, shape = text.split(":")
    pairs, positions = shape.split("x")
    return {"H": int(hidden), "V": int(vocab), "pairs": int(pairs), "T": int(positions)}


def peer(method: str):
    """TRL's or Liger's entry point, None when not importable."""
    try:
        if method == "trl":
            from trl.kernels.chunked_logprob import ChunkedLogProbFunction

            return ChunkedLogProbFunction
        from liger_kernel.chunked_loss import LigerFusedLinearSimPOLoss

        return LigerFusedLinearSimPOLoss
    except ImportError:
        return None


def objective(logps, pairs: int):
    """The SimPO loss over 2 * pairs sequences with the same number of scored tokens each, in order."""
    token_seq = torch.arange(2 * pairs, device=logps.device).repeat_interleave(logps.shape[0] // (2 * pairs))
    avg = average_logps(logps, token_seq, 2 * pairs)
    return simpo_loss(avg[:pairs], avg[pairs:], BETA, GAMMA).mean()


def run_method(method: str, hidden, weight, labels, score_index, args):
    """The loss from hidden [2P, T, H] through the head, then backward; returns the loss. labels [2P, T] are -100 on
    the prompt; score_index lists the other positions of hidden.flatten(0, 1), as the collator's batch does."""
    pairs = hidden.shape[0] // 2
    flat_labels = labels.flatten()[score_index]
    if method == "plain":
        logits = torch.nn.functional.linear(hidden, weight)  # [2P, T, V], as the model's head returns them
        selected = logits.flatten(0, 1)[score_index].float()
        logps, _ = logps_from_logits(selected, flat_labels), selected.detach().mean(-1)
    elif method in ("fused", "triton"):
        kernel = "torch" if method == "fused" else "triton"
        logps, _ = tiled_logps(
            hidden.flatten(0, 1)[score_index],
            weight,
            None,
            flat_labels,
            token_tile=args.token_tile,
            vocab_tile=args.vocab_tile,
            kernel=kernel,
        )
    elif method == "trl":
        logps, *_ = peer("trl").apply(
            hidden.flatten(0, 1)[score_index], weight, None, flat_labels, 1.0, TRL_CHUNK, None, 1.0, ("mean_logits",)
        )
    else:
        liger = peer("liger")(beta=BETA, gamma=GAMMA, compute_nll_loss=False, compiled=hidden.device.type == "cuda")
        loss = liger(weight, hidden, labels)[0]
    if method != "liger":
        loss = objective(logps, pairs)
    loss.backward()
    return loss.detach()


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


def gradient_errors(tensors, grads, loss, args) -> dict:
    """|g - g_ref| / |g_ref| for the hidden states' and the weight's gradients, and the loss's difference, against
    the plain path in fp32 on the same inputs."""
    reference = [t.detach().float().requires_grad_() if t.is_floating_point() else t for t in tensors]
    torch.set_float32_matmul_precision("highest")  # no TF32
    ref_loss = run_method("plain", *reference, args)
    errors = {"loss_error": abs(loss.item() - ref_loss.item())}
    for name, g, t in zip(("grad_h_error", "grad_w_error"), grads, reference):
        errors[name] = ((g.float() - t.grad).norm() / t.grad.norm()).item()
    return errors


def worker(args) -> dict:
    device, dtype, case = args.device, getattr(torch, args.dtype), parse_case(args.worker_case)
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    def make(hidden, vocab, pairs, positions):
        states = torch.randn(2 * pairs, positions, hidden, device=device, dtype=dtype).requires_grad_()
        weight = (torch.randn(vocab, hidden, device=device, dtype=dtype) * 0.02).requires_grad_()
        labels = torch.randint(0, vocab, (2 * pairs, positions), device=device)
        labels[:, : round(args.prompt * positions)] = -100
        return states, weight, labels, (labels.flatten() != -100).nonzero().squeeze(1)

    def clear():
        for t in tensors[:2]:
            t.grad = None

    run_method(args.worker, *make(64, 1000, 1, 8), args)  # thread pools, kernels, lazy inits: not the case's memory
    tensors = make(case["H"], case["V"], case["pairs"], case["T"])
    for _ in range(args.warmups):
        run_method(args.worker, *tensors, args)
        clear()
    reset, peak = memory_probe(device)
    base = reset()
    loss = run_method(args.worker, *tensors, args)
    sync()
    peak_mb = peak(base)
    grads = [t.grad for t in tensors[:2]]
    walls, cpus = [], []
    for _ in range(args.repeats):
        clear()
        wall, cpu = time.perf_counter(), time.process_time()
        run_method(args.worker, *tensors, args)
        sync()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    clear()
    result = {
        "method": args.worker,
        **case,
        "N": tensors[3].numel(),
        "peak_mb": round(peak_mb, 1),
        "walls": [round(t, 4) for t in walls],
        "cpus": [round(t, 4) for t in cpus],
    }
    if args.grad_error:
        result.update({k: float(f"{v:.3g}") for k, v in gradient_errors(tensors, grads, loss, args).items()})
    return result


def run_worker(args, method: str, case: str, grad_error: bool) -> dict:
    """One fresh process measuring one (method, case): its warm-ups, memory run and timed runs."""
    cmd = [sys.executable, __file__, "--worker", method, "--worker-case", case]
    for flag in ("device", "dtype", "prompt", "token_tile", "vocab_tile", "repeats", "warmups"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(cmd + ["--grad-error"] * grad_error, capture_output=True, text=True)
    if proc.returncode != 0:  # recorded, and the other methods still measured: a GPU run is not cheap to repeat
        print(f"{method} {case} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        lines = proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"]
        return {"method": method, **parse_case(case), "failed": lines[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def combine_rounds(rounds: list[dict]) -> dict:
    """One method's rounds as one result: the largest peak, every timed run, their medians, the first round's errors;
    or the first failure."""
    failed = next((r for r in rounds if "failed" in r), None)
    if failed:
        return failed
    walls = [t for r in rounds for t in r["walls"]]
    cpus = [t for r in rounds for t in r["cpus"]]
    errors = {k: v for k, v in rounds[0].items() if k.endswith("_error")}
    keep = ("method", "H", "V", "pairs", "T", "N")
    return {
        **{k: rounds[0][k] for k in keep},
        "peak_mb": max(r["peak_mb"] for r in rounds),
        "walls": walls,
        "wall_s": round(statistics.median(walls), 4),
        "cpu_s": round(statistics.median(cpus), 4),
        **errors,
    }


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def versions() -> dict:
    found = {}
    for name in ("torch", "triton", "trl", "liger-kernel"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def case_label(r: dict, setup: dict) -> str:
    if "pairs" in r:
        return f"{r['H']}:{r['V']}:{r['pairs']}x{r['T']}"
    return f"{setup['hidden']}:{r['V']}:T={r['T']}"  # results of the script before pairs: one sequence of T tokens


def report(setup: dict, results: list[dict]) -> list[str]:
    """One row per (case, method), ratios against the plain path of the same case."""
    lines = [
        "| case H:V:PxT | scored tokens | method | peak MB | / plain | time ms (median) | / plain "
        "| / plain (best) | grad h error | grad W error |",
        "|" + "---|" * 10,
    ]
    by_case = {}
    for r in results:
        by_case.setdefault(case_label(r, setup), []).append(r)
    for label, rows in by_case.items():
        plain = next((r for r in rows if r["method"] == "plain" and "failed" not in r), None)
        for r in sorted(rows, key=lambda r: METHODS.index(r["method"])):
            if "failed" in r:
                lines.append(f"| {label} | - | {r['method']} | failed: {r['failed'].replace('|', '/')} |")
                continue
            tokens = r.get("N", r["T"])
            ratio = (lambda a, b: f"{a / b:.3f}x") if plain else (lambda a, b: "-")
            errors = [f"{r[k]:.2e}" if k in r else "-" for k in ("grad_h_error", "grad_w_error")]
            cells = [
                label,
                str(tokens),
                r["method"],
                f"{r['peak_mb']:.0f}",
                ratio(r["peak_mb"], plain["peak_mb"]) if plain else "-",
                f"{1000 * r['wall_s']:.1f}",
                ratio(r["wall_s"], plain["wall_s"]) if plain else "-",
                ratio(min(r["walls"]), min(plain["walls"])) if plain else "-",
                *errors,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def available_methods(args) -> list[str]:
    methods = args.methods.split(",")
    notes = {
        "triton": "the Triton path needs CUDA (its CPU interpreter is for tests, far too slow to time)",
        "trl": "trl >= 1.15 (trl.kernels) is not importable (pip install 'trl>=1.15')",
        "liger": "liger-kernel is not importable (pip install liger-kernel)",
    }
    skip = {"triton": args.device != "cuda", "trl": peer("trl") is None, "liger": peer("liger") is None}
    for method in [m for m in methods if skip.get(m)]:
        print(f"note: skipping {method}: {notes[method]}.")
        methods.remove(method)
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--cases", default=None, help=f"comma-separated H:V:PxT (default: CPU {CPU_CASES}; CUDA {CUDA_CASES})"
    )
    parser.add_argument("--prompt", type=float, default=None, help="unscored fraction of a sequence (CPU 0, CUDA 0.5)")
    parser.add_argument("--token-tile", type=int, default=None, help="fused/triton tiles (default: their own)")
    parser.add_argument("--vocab-tile", type=int, default=None)
    parser.add_argument("--warmups", type=int, default=None, help="runs before the measured ones (CPU 0, CUDA 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per round (CPU 2, CUDA 5)")
    parser.add_argument("--rounds", type=int, default=None, help="fresh processes per method (CPU 3, CUDA 1)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="V=32000,128256 at 1 pair x 512, 1 timed run, no files")
    parser.add_argument("--out", default=None, help="results stem (default benchmarks/results/logps_memory_<device>)")
    parser.add_argument("--render", metavar="STEM", help="rewrite STEM.md from STEM.json (after editing the report)")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-case", help=argparse.SUPPRESS)
    parser.add_argument("--grad-error", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.warmups = (2 if cuda else 0) if args.warmups is None else args.warmups
    args.repeats = (5 if cuda else 2) if args.repeats is None else args.repeats
    args.rounds = (1 if cuda else 3) if args.rounds is None else args.rounds
    args.prompt = (0.5 if cuda else 0.0) if args.prompt is None else args.prompt
    if args.render:
        write_markdown(Path(args.render))
        return
    if args.worker:
        print(json.dumps(worker(args)))
        return
    cases = args.cases or (CUDA_CASES if cuda else CPU_CASES)
    if args.quick:
        cases, args.repeats, args.rounds = "256:32000:1x512,256:128256:1x512", 1, 1
    methods = available_methods(args)

    token_tile, vocab_tile = DEFAULT_TILES.get(args.device, DEFAULT_TILES["cuda"])
    setup = {
        "device": args.device,
        "dtype": args.dtype,
        "prompt": args.prompt,
        "fused_tiles": [args.token_tile or token_tile, args.vocab_tile or vocab_tile],
        "triton_tiles": [args.token_tile, args.vocab_tile] if args.token_tile or args.vocab_tile else "timed",
        "warmups": args.warmups,
        "rounds": args.rounds,
        "timed_runs_per_round": args.repeats,
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {cpu_name()}" + (f", {torch.cuda.get_device_name()}" if cuda else ""),
        **versions(),
    }
    stem = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"logps_memory_{args.device}"
    results = []
    for case in cases.split(","):
        # Rounds alternate the methods, and rotate which goes first, so that a slow spell of a shared machine, or
        # the kernel reclaiming the gigabytes the previous process freed, falls on all of them alike.
        runs = {m: [] for m in methods}
        for r in range(args.rounds):
            for method in methods[r % len(methods) :] + methods[: r % len(methods)]:
                runs[method].append(run_worker(args, method, case, grad_error=r == 0))
        for rounds in runs.values():
            results.append(combine_rounds(rounds))
            print(json.dumps(results[-1]), flush=True)
            if results[-1].get("loss_error", 0) > 0.05:  # bf16 rounding moves the loss by ~1e-3: a different loss
                print(
                    f"warning: {results[-1]['method']}'s loss is {results[-1]['loss_error']} from the fp32 plain "
                    "path's: not the same objective?",
                    file=sys.stderr,
                )
        if not args.quick:  # after every case: a run stopped by a time limit keeps what it measured
            stem.parent.mkdir(parents=True, exist_ok=True)
            stem.with_suffix(".json").write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")
            write_markdown(stem, echo=False)
    print("\n".join(report(setup, results)))
    if not args.quick:
        print(f"wrote {stem}.json and {stem}.md")


def write_markdown(stem: Path, echo: bool = True) -> None:
    """stem.md from stem.json: the setup, what is measured, and the table."""
    data = json.loads(stem.with_suffix(".json").read_text())
    setup, lines = data["setup"], report(data["setup"], data["results"])
    header = [
        f"# SimPO log-probs + backward: peak memory, time and gradient error ({setup['device']}, {setup['dtype']})",
        "",
        ", ".join(f"{k}: {v}" for k, v in setup.items()),
        "",
        "Case H:V:PxT: P pairs of sequences of T positions, the first `prompt` fraction of each not scored, hidden "
        "size H, head weight [V, H]; the SimPO loss on the scored tokens' log-probs, then backward (gradients for "
        "the hidden states and the weight). Results "
        "labelled H:V:T=... come from the script's earlier version: one sequence of T tokens, backward of the sum of "
        "its log-probs.",
        "Peak MB: growth over setup (CPU: peak RSS; CUDA: max_memory_allocated); it includes the weight's gradient "
        "[V, H] that every method produces, the largest of the rounds.",
        f"Time: median wall ms over {setup['rounds']} round(s) (fresh processes, methods alternating in a rotating "
        f"order) of {setup['timed_runs_per_round']} runs after the measured one; 'best' compares the fastest runs.",
        "Gradient error: |g - g_ref| / |g_ref|, g_ref from the plain path in fp32 on the same inputs (first round).",
        f"The issue's targets ({setup['device']}): {TARGETS.get(setup['device'], '-')}.",
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(header + lines) + "\n")
    if echo:
        print("\n".join(lines) + f"\nwrote {stem}.md")


if __name__ == "__main__":
    main()
