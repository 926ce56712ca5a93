"""Sampling throughput of simpo-generate's transformers backend (batched, left-padded `generate`, prompts ordered by
length as simpo-generate plans them) against the plain path, `model.generate` one prompt at a time, on the same
random-init Llama and prompts in the same run.

Prompts are random token ids with UltraFeedback-like lengths (lognormal, median ~90 tokens). End-of-turn is switched
off so every sample has exactly max_tokens new tokens: both paths do the same work and tokens/s = samples/s x
max_tokens.

    python benchmarks/generation.py                                      # CPU, small Llama -> generation_cpu.*
    python benchmarks/generation.py --device cuda --dtype bfloat16 --size 1b   # GPU, ~1B Llama -> generation_cuda.*
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from simpo.pipeline.backends import TransformersBackend
from simpo.pipeline.generate import plan_units

SIZES = {  # 1b: TinyLlama-1.1B's layers (as benchmarks/gpu_check_run.py), on the tiny 653-token vocabulary
    "small": dict(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
    ),
    "1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4
    ),
}


def build(folder: Path, size: str, dtype: torch.dtype):
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "assets" / "tiny-llama")
    tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SIZES[size],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return tokenizer, sum(p.numel() for p in model.parameters())


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--prompts", type=int, default=None, help="default 32 on CPU, 256 on GPU")
    parser.add_argument("--batch", type=int, default=None, help="default 16 on CPU, 64 on GPU")
    parser.add_argument("--max-tokens", type=int, default=None, help="default 32 on CPU, 256 on GPU")
    parser.add_argument(
        "--plain-prompts",
        type=int,
        default=32,
        help="prompts the one-at-a-time baseline decodes (its rate is per prompt; all of them would"
        " take minutes on a GPU)",
    )
    parser.add_argument("--out", help="results stem (default benchmarks/results/generation_<device>)")
    args = parser.parse_args()
    gpu = args.device != "cpu"
    n, batch = args.prompts or (256 if gpu else 32), args.batch or (64 if gpu else 16)
    max_tokens = args.max_tokens or (256 if gpu else 32)
    dtype = getattr(torch, args.dtype)

    with tempfile.TemporaryDirectory() as folder:
        tokenizer, params = build(Path(folder), args.size, dtype)
        model_args = SimpleNamespace(
            model_name_or_path=folder,
            model_revision="main",
            trust_remote_code=False,
            torch_dtype=args.dtype,
            attn_implementation="sdpa",
        )
        backend = TransformersBackend(model_args, tokenizer, temperature=0.8, top_p=0.95, max_tokens=max_tokens)
    backend.config.eos_token_id = None  # no early stops: every sample is max_tokens long
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(90), 0.6, n), 8, 1024).astype(int)
    prompts = [[tokenizer.bos_token_id] + rng.integers(3, len(tokenizer), k - 1).tolist() for k in lengths]
    units = plan_units({"bench": prompts}, seeds=[0], batch_size=batch)

    def batched():
        for unit in units:
            backend.generate([prompts[i] for i in unit.rows], batch_seed=0, row_seeds=[])

    plain_prompts = prompts[: args.plain_prompts]

    def one_at_a_time():
        for ids in plain_prompts:
            backend.model.generate(
                input_ids=torch.tensor([ids], device=backend.device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=backend.device),
                generation_config=backend.config,
            )

    backend.generate(prompts[:2], 0, [])  # warm-up: kernels, allocator
    results = {}
    for name, fn, count in (
        ("batched (simpo-generate)", batched, n),
        ("one prompt at a time (plain)", one_at_a_time, len(plain_prompts)),
    ):
        seconds = timed(fn)
        results[name] = {
            "prompts": count,
            "seconds": seconds,
            "samples_per_s": count / seconds,
            "tokens_per_s": count * max_tokens / seconds,
        }
    plain = results["one prompt at a time (plain)"]["samples_per_s"]
    for result in results.values():
        result["vs_plain"] = result["samples_per_s"] / plain

    device_name = torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()
    meta = {
        "device": args.device,
        "device_name": device_name,
        "dtype": args.dtype,
        "parameters": params,
        "prompts": n,
        "batch": batch,
        "max_tokens": max_tokens,
        "median_prompt_tokens": int(np.median(lengths)),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    stem = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"generation_{'cuda' if gpu else 'cpu'}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        f"# simpo-generate sampling throughput ({args.device}, {args.dtype})",
        "",
        ", ".join(f"{k} {v}" for k, v in meta.items()),
        "",
        "| path | samples/s | new tokens/s | vs plain |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | {r['vs_plain']:.2f}x |"
        for name, r in results.items()
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
