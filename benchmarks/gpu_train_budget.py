"""The memory-budget part of benchmarks/gpu_train.py: each system's largest per-device batch within a memory budget,
each try a fresh run (gpu_train.Runner), and its pairs/s there."""


def largest_fitting_batch(fits, start: int, step: int, max_batch: int, max_tries: int) -> dict:
    """The largest multiple of `step` up to max_batch for which fits(batch) is True. From `start`, double until a
    batch does not fit (or halve until one does), then bisect between the largest fit and the smallest misfit.
    fits() returns True, False, or None to stop (no time left, or an error that says nothing about memory)."""
    fit, misfit, tried = 0, None, []
    batch = max(step, min(max_batch, start // step * step))
    while batch is not None and len(tried) < max_tries:
        outcome = fits(batch)
        if outcome is None:
            break
        tried.append(batch)
        fit, misfit = (batch, misfit) if outcome else (fit, batch)
        if misfit is None:
            batch = min(2 * fit, max_batch) if fit < max_batch else None
        else:
            middle = (fit + misfit) // 2 // step * step
            batch = middle if middle > fit else None
    # exact: the next size up did not fit; cap: max_batch fits; open: the tries or the time ran out first
    bound = "exact" if misfit is not None and misfit - fit <= step else "cap" if fit == max_batch else "open"
    return {"largest": fit or None, "smallest_misfit": misfit, "bound": bound, "tried": tried}


def predicted_batch(row: dict, budget_gib: float, batch: int) -> int:
    """Where the search starts: memory = static part (weights, optimizer state) + batch x a per-pair part, from
    the table's run (reserved, as the budget caps what the allocator reserves); the table's batch without them."""
    if row.get("status") != "ok" or not row.get("static_gib"):
        return batch
    per_pair = max(row["peak_reserved_gib"] - row["static_gib"], 1e-3) / batch
    return int((0.9 * budget_gib - row["static_gib"]) / per_pair)


def predicted_seconds(row: dict, s: dict, batch: int) -> float:
    """A budget run's duration from the table run: its time outside the timed steps, plus the steps at its rate."""
    if "wall_s" not in row:
        return 0.0
    steps = s["budget_warmup"] + s["budget_timed"]
    outside = row["wall_s"] - row["timed_seconds"] * (s["warmup"] + s["timed"]) / s["timed"]
    return outside + steps * batch / row["pairs_per_s"]


def search_one(runner, system, table_row: dict, budget_gib: float) -> dict:
    """One system's largest batch within the budget, each try a fresh run; none starts without time to finish."""
    s, tries = runner.s, {}

    def fits(batch: int) -> bool | None:
        needed = predicted_seconds(table_row, s, batch)
        if needed > runner.left():
            tries[batch] = {"status": f"skipped: needs about {needed:.0f} s, {runner.left():.0f} s left"}
            return None
        tries[batch] = runner.run(system, batch, s["budget_warmup"], s["budget_timed"], budget_gib)
        return {"ok": True, "oom": False}.get(tries[batch]["status"])  # anything else stops the search

    start = predicted_batch(table_row, budget_gib, s["batch"])
    found = largest_fitting_batch(fits, start, s["budget_step"], s["budget_max_batch"], s["budget_tries"])
    done = {b: t for b, t in tries.items() if t["status"] == "ok"}
    at_largest = done.get(found["largest"], {})
    fastest = max(done, key=lambda b: done[b]["pairs_per_s"], default=None)
    last = list(tries.values())[-1]["status"] if tries else "no run"
    return {
        **found,
        "status": "ok" if found["largest"] else "nothing fits" if found["smallest_misfit"] else last,
        "pairs_per_s": at_largest.get("pairs_per_s"),
        "peak_allocated_gib": at_largest.get("peak_allocated_gib"),
        "peak_rss_gib": at_largest.get("peak_rss_gib"),
        "fastest_batch": fastest,
        "fastest_pairs_per_s": done[fastest]["pairs_per_s"] if fastest else None,
        "tries": {str(b): t for b, t in tries.items()},
    }


def budget_search(runner, systems: list, table: list[dict], budget_gib: float) -> list[dict]:
    s = runner.s
    print(
        f"== memory budget {budget_gib:g} GiB: largest batch on a grid of {s['budget_step']} up to "
        f"{s['budget_max_batch']}, at most {s['budget_tries']} runs a system"
    )
    rows = []
    for system, table_row in zip(systems, table):
        row = {"system": system.name, "label": system.label}
        if table_row["status"] != "ok":
            row["status"] = f"not searched: its table row is {table_row['status']!r}"
        else:
            row.update(search_one(runner, system, table_row, budget_gib))
        rows.append(row)
    return rows
