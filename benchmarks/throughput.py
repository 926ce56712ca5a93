"""Training throughput of the SimPO step: plain pairs vs prefix sharing vs prefix sharing + padding-free packing.

One step = collate + forward + SimPO loss + backward + AdamW step, on a ~11M-parameter random Llama (hidden 256,
4 layers, vocab 32000) with UltraFeedback-like lengths (seeded: prompts lognormal, median ~90 tokens; responses
median ~230 with a long tail). Every mode trains on the same batches, and tokens are counted the same way in all of
them (real tokens of the chosen and rejected sequences, the prompt once per side, as the plain layout runs it), so
the tokens/s differences are pure speed. Each mode runs in a fresh subprocess so its peak RSS is its own, over
--rounds rounds with the modes in a rotating order (a shared machine's slow spells fall on every mode alike); each
mode's row is its median round, and the per-round figures are kept.

    python benchmarks/throughput.py                 # CPU, fp32: writes benchmarks/results/throughput_cpu.{json,md}
    python benchmarks/throughput.py --quick         # a smoke run (few steps)
    python benchmarks/throughput.py --device cuda --dtype bfloat16   # writes throughput_cuda.{json,md}
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simpo.train.layouts.plain import PlainLayout
from simpo.train.layouts.shared_prefix import SharedPrefixLayout
from simpo.train.logps import plain_token_logps
from simpo.train.loss import average_logps, simpo_loss

MODES = {
    "plain": "plain pairs (PlainLayout)",
    "prefix_sharing": "prefix sharing, one padded row per pair",
    "prefix_sharing+padding_free": "prefix sharing + padding-free (pairs packed into one row)",
}
VOCAB, BOS, EOS, PAD = 32000, 1, 2, 0


# (median, sigma) of the lognormal token counts. ultrafeedback: the measured medians, a mild tail. long_tail: the same
# medians with a heavy tail (prompts shorter than replies; at max_length 1024 about one sequence in seven is cut there).
LENGTHS = {
    "ultrafeedback": {"prompt": (90, 0.5), "response": (230, 0.55)},
    "long_tail": {"prompt": (110, 0.9), "response": (310, 0.9)},
}


def make_pairs(rng: np.random.Generator, num_pairs: int, max_length: int, lengths: str = "ultrafeedback") -> list[dict]:
    (p_median, p_sigma), (r_median, r_sigma) = LENGTHS[lengths]["prompt"], LENGTHS[lengths]["response"]
    pairs = []
    for _ in range(num_pairs):
        prompt_len = int(np.clip(rng.lognormal(np.log(p_median), p_sigma), 8, max_length // 2))
        prompt = [BOS] + rng.integers(3, VOCAB, prompt_len - 1).tolist()
        row = {"prompt_length": prompt_len}
        for side in ("chosen", "rejected"):
            length = int(np.clip(rng.lognormal(np.log(r_median), r_sigma), 2, max_length - prompt_len))
            response = rng.integers(3, VOCAB, length - 1).tolist() + [EOS]
            row[f"{side}_input_ids"] = prompt + response
            row[f"{side}_labels"] = [-100] * prompt_len + response
        pairs.append(row)
    return pairs


def layout(mode: str, max_tokens_per_row: int | None, model):
    if mode == "plain":
        return PlainLayout(PAD)
    return SharedPrefixLayout(
        PAD,
        padding_free=mode.endswith("padding_free"),
        max_tokens_per_row=max_tokens_per_row,
        config=model.config,
        mask_dtype=model.dtype,
    )


def build_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    model = LlamaForCausalLM(config).to(device=args.device, dtype=dtype)
    model.set_attn_implementation(args.attn)
    return model


def worker(args) -> dict:
    """Train args.worker's layout for warm-up + timed steps; print one JSON line."""
    model = build_model(args)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    collate = layout(args.worker, args.max_tokens_per_row, model)
    rng = np.random.default_rng(args.seed)
    batches = [make_pairs(rng, args.pairs, args.max_length, args.lengths) for _ in range(args.warmup + args.steps)]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    times, cpu_times, tokens, slots = [], [], [], []
    for step, pairs in enumerate(batches):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        batch = {k: v.to(args.device) for k, v in collate(pairs).items()}
        inputs = collate.model_inputs(batch)
        token_logps, _ = plain_token_logps(model, inputs, batch["score_index"], batch["score_labels"])
        num_seqs = batch["response_lengths"].numel()
        avg = average_logps(token_logps, batch["score_seq"], num_seqs)
        loss = simpo_loss(avg[: num_seqs // 2], avg[num_seqs // 2 :], beta=2.0, gamma=0.5).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            tokens.append(sum(len(p["chosen_input_ids"]) + len(p["rejected_input_ids"]) for p in pairs))
            slots.append(batch["input_ids"].numel())

    result = {
        "mode": args.worker,
        "tokens_per_s": sum(tokens) / sum(times),
        # CPU seconds of all this process's threads: less sensitive than wall time to other jobs on a shared box.
        "tokens_per_cpu_s": sum(tokens) / sum(cpu_times),
        "median_step_s": float(np.median(times)),
        "tokens_per_batch": sum(tokens) / len(tokens),
        "token_slots_per_batch": sum(slots) / len(slots),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "final_loss": loss.item(),
    }
    if args.device == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--pairs", type=int, default=4, help="pairs per batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=1024, help="cap on prompt + one response")
    parser.add_argument("--max-tokens-per-row", type=int, default=None, help="padding-free row cap (None: one row)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lengths", default="ultrafeedback", choices=list(LENGTHS), help="the length distribution")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--rounds", type=int, default=3, help="each mode runs once a round; its median round is kept")
    parser.add_argument("--quick", action="store_true", help="3 timed steps after 1 warm-up; no results written")
    parser.add_argument("--out", default=None, help="results stem (default benchmarks/results/throughput_<device>)")
    parser.add_argument("--worker", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 3, 1
    if args.worker:
        print(json.dumps(worker(args)))
        return

    forwarded = [a for a in sys.argv[1:] if a not in ("--quick",)] + (
        ["--steps", "3", "--warmup", "1"] if args.quick else []
    )
    modes, rounds = args.modes.split(","), 1 if args.quick else args.rounds
    runs = {mode: [] for mode in modes}
    for round_ in range(rounds):
        for mode in modes[round_ % len(modes) :] + modes[: round_ % len(modes)]:
            proc = subprocess.run(
                [sys.executable, __file__, *forwarded, "--worker", mode], capture_output=True, text=True
            )
            if proc.returncode != 0:
                sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(
                f"round {round_ + 1} {mode:28s} {runs[mode][-1]['tokens_per_s']:8.0f} tokens/s  peak RSS"
                f" {runs[mode][-1]['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    results = []
    for mode in modes:  # the median round, with every round's figures
        ranked = sorted(runs[mode], key=lambda r: r["tokens_per_s"])
        results.append({**ranked[len(ranked) // 2], "rounds_tokens_per_s": [r["tokens_per_s"] for r in runs[mode]]})
    plain = next((r for r in results if r["mode"] == "plain"), None)
    for r in results:
        r["speedup_vs_plain"] = r["tokens_per_s"] / plain["tokens_per_s"] if plain else None
        r["cpu_speedup_vs_plain"] = r["tokens_per_cpu_s"] / plain["tokens_per_cpu_s"] if plain else None

    setup = {
        "device": args.device,
        "dtype": args.dtype,
        "attn": args.attn,
        "pairs_per_batch": args.pairs,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "rounds": rounds,
        "max_length": args.max_length,
        "max_tokens_per_row": args.max_tokens_per_row,
        "lengths": args.lengths,
        "seed": args.seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "params_m": round(results[0]["params_m"], 2),
    }
    import transformers

    setup["transformers"] = transformers.__version__
    if args.device == "cuda":
        setup["gpu"] = torch.cuda.get_device_name()
    if args.quick:
        return
    stem = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"throughput_{args.device}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")
    memory = "peak CUDA MB" if args.device == "cuda" else "peak RSS MB"
    lines = [
        f"# SimPO training throughput ({args.device}, {args.dtype}, {args.attn})",
        "",
        ", ".join(f"{k}: {v}" for k, v in setup.items()),
        "",
        "Tokens are the real tokens the plain layout runs (prompt once per side), identical in every mode. Tokens per",
        "CPU-second divides by the process's CPU time instead of wall time (steadier when the machine is shared).",
        "Each row is the mode's median round; the rounds' tokens/s follow.",
        "",
        f"| mode | tokens/s | vs plain | tokens/CPU-s | vs plain | median step s | token slots / batch "
        f"| real tokens / batch | {memory} | tokens/s per round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mem = r.get("peak_cuda_mb", r["peak_rss_mb"])
        lines.append(
            f"| {MODES[r['mode']]} | {r['tokens_per_s']:.0f} | {r['speedup_vs_plain']:.2f}x | "
            f"{r['tokens_per_cpu_s']:.0f} | {r['cpu_speedup_vs_plain']:.2f}x | "
            f"{r['median_step_s']:.2f} | {r['token_slots_per_batch']:.0f} | {r['tokens_per_batch']:.0f} | "
            f"{mem:.0f} | {', '.join(f'{t:.0f}' for t in r['rounds_tokens_per_s'])} |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
