"""The results of benchmarks/gpu_train.py: MFU, ratios and the loss agreement added to the runs' figures, written to
gpu_train_<device>_<UTC time>.json and rendered as the tables of the .md beside it."""

import importlib.metadata
import json
import re
import time
from pathlib import Path

from gpu_check_run import peak_flops, versions

BASELINES = {"trl": "TRL", "simpo_plain": "plain"}  # system -> the name of its ratio column


def memory(row: dict) -> float | None:
    """Peak allocated device memory on a GPU, peak RSS of the process on a CPU."""
    return row.get("peak_allocated_gib") if row.get("peak_allocated_gib") is not None else row.get("peak_rss_gib")


def add_ratios(rows: list[dict], getters: dict) -> None:
    """row["x_<baseline>"] = {name: getter(row) / getter(baseline row)} for each baseline that ran."""
    done = {r["system"]: r for r in rows if r.get("status") == "ok"}
    for row in rows:
        for base in BASELINES:
            if row.get("status") == "ok" and base in done:
                row[f"x_{base}"] = {name: ratio(get(row), get(done[base])) for name, get in getters.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def installed(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def assemble(
    settings: dict, smoke: bool, table: list[dict], budget: list[dict], seconds: float, processes: dict
) -> dict:
    """processes: how runs were started (start_method, forkserver or spawn) and the seconds that took (startup_s)."""
    runs = table + [t for row in budget for t in row.get("tries", {}).values()]
    first = next((run for run in runs if run.get("status") == "ok"), {})  # device, params and data are the same
    device = first.get("device_name", "cpu" if smoke else "unknown GPU")
    flops = None if smoke else peak_flops(device)
    for row in table:
        if row.get("status") == "ok" and flops:
            row["mfu"] = 6 * row["params"] * row["tokens_per_s"] / flops
    add_ratios(table, {"pairs_per_s": lambda r: r["pairs_per_s"], "memory": memory})
    add_ratios(budget, {"pairs_per_s": lambda r: r["pairs_per_s"], "batch": lambda r: r["largest"]})
    done = {r["system"]: r for r in table if r.get("status") == "ok"}
    reference = next((done[b] for b in BASELINES if b in done), None)
    for row in done.values():
        row["loss_minus_reference"] = row["first_loss"] - reference["first_loss"]
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "device": device,
        "smoke": smoke,
        "peak_tflops": flops / 1e12 if flops else None,
        "settings": settings,
        "params": first.get("params"),
        "data": first.get("data"),
        "loss_reference": reference["system"] if reference else None,
        "max_abs_loss_difference": max((abs(r["loss_minus_reference"]) for r in done.values()), default=None),
        "table": table,
        "budget": budget,
        "total_seconds": seconds,
        "processes": processes,
        "versions": {**versions(), "trl": installed("trl"), "liger-kernel": installed("liger-kernel")},
    }


def write(results: dict, out_dir: Path) -> Path:
    tag = "smoke-cpu" if results["smoke"] else re.sub(r"[^a-z0-9]+", "-", results["device"].lower()).strip("-")
    stem = out_dir / f"gpu_train_{tag.removeprefix('nvidia-')}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    out_dir.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(results, indent=1))
    Path(f"{stem}.md").write_text(render(results))
    return stem


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratios(row: dict, name: str) -> list[str]:
    return [fmt(row.get(f"x_{base}", {}).get(name), ".2f") for base in BASELINES]


def describe_run(r: dict) -> str:
    s, d, shape = r["settings"], r["data"] or {}, r["settings"]["shape"]
    tokens = lambda k: "mean {mean}, median {median:g}, max {max}".format(**d[k]) if k in d else "-"
    return (
        f"Random-init Llama, {fmt(r['params'], ',')} parameters (hidden {shape['hidden_size']}, "
        f"{shape['num_hidden_layers']} layers, {shape['num_attention_heads']}/{shape['num_key_value_heads']} heads, "
        f"MLP {shape['intermediate_size']}, vocabulary {shape['vocab_size']}, tied embeddings); "
        f"{d.get('pairs', '-')} synthetic pairs: prompt tokens {tokens('prompt_tokens')}; response tokens "
        f"{tokens('response_tokens')}; {d.get('real_tokens_per_pair', '-')} real tokens a pair. {s['batch']} pairs "
        f"a step, max_length {s['max_length']}, activation checkpointing, AdamW, {s['dtype']}, sdpa; "
        f"{s['timed']} timed steps after {s['warmup']} warm-up; each system in a process of its own."
    )


def render(r: dict) -> str:
    s, gpu = r["settings"], not r["smoke"]
    mem = "peak allocated (GiB)" if gpu else "peak RSS (GiB)"
    names, bars = " | ".join(f"x {v}" for v in BASELINES.values()), "---|" * len(BASELINES)
    mfu = (
        f"MFU = 6 x params x real tokens/s / {fmt(r['peak_tflops'], '.0f')} TFLOP/s (the GPU's dense bf16 peak)"
        if gpu
        else "MFU: GPU runs only"
    )
    lines = [
        f"# SimPO training throughput: {r['device']}, {r['date_utc']} UTC" + ("" if gpu else " (CPU smoke run)"),
        "",
        describe_run(r),
        "",
        f"Real tokens: non-padding tokens as the plain layout runs them (the prompt once per side, also where prefix "
        f"sharing runs it once). {mfu}. First-step loss: before any update, on the same pairs in the same order for "
        "every system.",
        "",
        f"| system | pairs/s | {names} | real tokens/s | {mem} | {names} | peak reserved (GiB) | MFU | "
        "first-step loss | status |",
        f"|---|---|{bars}---|---|{bars}---|---|---|---|",
    ]
    for row in r["table"]:
        status = "ok" if row.get("status") == "ok" else f"{row['status']} {row.get('error', '')}".strip()
        lines.append(
            "| "
            + " | ".join(
                [
                    row["label"],
                    fmt(row.get("pairs_per_s"), ".2f"),
                    *ratios(row, "pairs_per_s"),
                    fmt(row.get("tokens_per_s"), ",.0f"),
                    fmt(memory(row), ".2f"),
                    *ratios(row, "memory"),
                    fmt(row.get("peak_reserved_gib"), ".2f"),
                    fmt(row.get("mfu"), ".1%"),
                    fmt(row.get("first_loss"), ".5f"),
                    status,
                ]
            )
            + " |"
        )
    lines += [
        "",
        'What each row ran: the log-prob kernel and attention that ran (never "auto"), activation '
        "checkpointing, Liger's kernels; the first step's seconds (compiles, autotuning and the tile timing "
        "included), torch.compile's seconds, graphs and recompiles, and the Triton tile warm-up.",
        "",
        "| system | log-probs | attention | checkpointing | liger | first step (s) | compile (s) | graphs | "
        "recompiles | tile warm-up (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["table"]:
        if row.get("status") == "ok":
            lines.append(
                "| "
                + " | ".join(
                    [
                        row["system"],
                        str(row.get("logps_kernel", "-")),
                        str(row.get("attention", "-")),
                        str(row.get("activation_checkpointing", "-")),
                        str(row.get("liger", "-")),
                        fmt(row.get("first_step_s"), ".1f"),
                        fmt(row.get("compile_s"), ".1f"),
                        fmt(row.get("graphs"), "d"),
                        fmt(row.get("recompiles"), "d"),
                        fmt(row.get("tile_warmup_s"), ".1f"),
                    ]
                )
                + " |"
            )
    if r["max_abs_loss_difference"] is not None:
        lines += ["", f"First-step losses: all within {r['max_abs_loss_difference']:.2g} of {r['loss_reference']}'s."]
    if r["budget"]:
        what = (
            f"in {s['memory_budget_gib']:g} GiB of GPU memory"
            if gpu
            else f"in a simulated budget ({s['memory_budget_gib']:g} GiB of data-segment growth once training starts)"
        )
        lines += [
            "",
            f"## Largest per-device batch {what}",
            "",
            f"A grid of {s['budget_step']} pairs up to {s['budget_max_batch']}, each try in a fresh process, "
            f"{s['budget_timed']} timed steps after {s['budget_warmup']} warm-up. Bound: exact (the next size up did "
            "not fit), cap (the largest size tried fits), open (the tries or the time ran out first).",
            "",
            f"| system | largest batch | bound | pairs/s there | {names} | {mem} | fastest try | tries |",
            f"|---|---|---|---|{bars}---|---|---|",
        ]
        for row in r["budget"]:
            tries = ", ".join(f"{b}: {t['status']}" for b, t in row.get("tries", {}).items()) or row["status"]
            fastest = (
                f"{row['fastest_pairs_per_s']:.2f} pairs/s at {row['fastest_batch']}"
                if row.get("fastest_batch")
                else "-"
            )
            lines.append(
                "| "
                + " | ".join(
                    [
                        row["label"],
                        fmt(row.get("largest"), "d"),
                        row.get("bound", "-"),
                        fmt(row.get("pairs_per_s"), ".2f"),
                        *ratios(row, "pairs_per_s"),
                        fmt(memory(row), ".2f"),
                        fastest,
                        tries,
                    ]
                )
                + " |"
            )
    p = r["processes"]
    lines += [
        "",
        f"{r['total_seconds']:.0f} s in all; runs started by {p['start_method']} ({p['startup_s']:.0f} s to "
        "start). "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "",
    ]
    return "\n".join(lines)
