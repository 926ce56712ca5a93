"""`simpo-binarise PIPELINE.yaml [--key=value ...]`: the best and the worst scored response of each prompt as a
preference pair, written where dataset_mixer reads it.

Per prompt, responses that are empty or were not scored (null: too long for the reward model; or NaN) are left out;
chosen is the highest score, rejected the lowest (the first one on equal scores). The prompt is dropped, and counted
by reason, when fewer than two responses remain, when chosen and rejected are the same text, when the scores tie,
or when the gap is below `min_score_gap`.

Writes OUTPUT_DIR/dataset/<side>.jsonl (rows: prompt, chosen, rejected as message lists, score_chosen,
score_rejected): train with `dataset_mixer: {OUTPUT_DIR/dataset: 1.0}` and `dataset_splits: [train, test]`. Also
OUTPUT_DIR/dataset/summary.json (pairs kept, drops by reason, score gaps, chosen/rejected lengths in policy tokens)
and score_gaps.png.
"""

import json
import logging
import math
import os
import statistics
from collections import Counter

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simpo.errors import DataError
from simpo.models.loading import get_tokenizer
from simpo.pipeline.config import parse_pipeline_args
from simpo.pipeline.work_units import numbered_jsonl, previous_stage_sides, write_atomic, write_jsonl
from simpo.reporting.logs import setup_logging
from simpo.run.commands import report_input_errors
from simpo.run.folder_lock import lock_folder

logger = logging.getLogger("simpo")
DESCRIPTION = "Turn scored replies into preference pairs, best against worst per prompt (on-policy data, step 3 of 3)."


def scored(score) -> bool:
    """A number the reward model gave: null (too long to score) and NaN (a failed score) are unscored."""
    return isinstance(score, (int, float)) and math.isfinite(score)


def best_and_worst(row: dict) -> tuple[int, int] | str:
    """Indices of the chosen and rejected responses, or why the prompt makes no pair."""
    candidates = [
        k for k, (reply, score) in enumerate(zip(row["responses"], row["scores"])) if scored(score) and reply.strip()
    ]
    if len(candidates) < 2:
        return "fewer than two scored, non-empty responses"
    if len({row["responses"][k] for k in candidates}) == 1:
        return "identical responses"
    best = max(candidates, key=lambda k: row["scores"][k])  # max and min keep the first of equal scores
    worst = min(candidates, key=lambda k: row["scores"][k])
    if row["scores"][best] == row["scores"][worst]:
        return "tied scores"
    if row["responses"][best] == row["responses"][worst]:  # one text scored twice, differently
        return "identical responses"
    return best, worst


def read_annotations(path: str) -> list[dict]:
    """simpo-annotate's rows; a row that is not one (no "scores" list, one per response) names its line."""
    rows = []
    for number, row in numbered_jsonl(path, "simpo-annotate"):
        responses, scores = row.get("responses"), row.get("scores")
        if not isinstance(responses, list) or not isinstance(scores, list) or len(scores) != len(responses):
            found = (
                "no 'scores'"
                if scores is None
                else "no 'responses'"
                if responses is None
                else (
                    f"{len(scores) if isinstance(scores, list) else scores!r:.40} scores for"
                    f" {len(responses) if isinstance(responses, list) else responses!r:.40} responses"
                )
            )
            raise DataError(
                f"{path} line {number}: a row needs 'responses' and 'scores' (one score per response),"
                f" this one has {found}. Give simpo-annotate's output: rerun simpo-annotate with this"
                " config."
            )
        rows.append(row)
    return rows


def preference_row(row: dict, best: int, worst: int) -> dict:
    """In the training data format: a message-list prompt is kept as the prompt turns, a string prompt is the
    turns before the reply in chosen and rejected."""
    turns = [] if isinstance(row["prompt"], list) else row["messages"]
    reply = lambda k: turns + [{"role": "assistant", "content": row["responses"][k]}]
    return {
        "prompt": row["prompt"],
        "chosen": reply(best),
        "rejected": reply(worst),
        "score_chosen": row["scores"][best],
        "score_rejected": row["scores"][worst],
    }


def binarise(rows: list[dict], min_score_gap: float) -> tuple[list[dict], Counter, list[float]]:
    """(pairs, drop counts by reason, the score gap of every prompt with two distinct scores)."""
    pairs, drops, gaps = [], Counter(), []
    for row in rows:
        picked = best_and_worst(row)
        if isinstance(picked, str):
            drops[picked] += 1
            continue
        gap = row["scores"][picked[0]] - row["scores"][picked[1]]
        gaps.append(gap)
        if gap < min_score_gap:
            drops["score gap below min_score_gap"] += 1
            continue
        pairs.append(preference_row(row, *picked))
    return pairs, drops, gaps


def describe(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": ordered[0],
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "max": ordered[-1],
    }


def length_stats(pairs: list[dict], tokenizer) -> dict:
    """Reply lengths in policy tokens: SimPO normalises by length, and a chosen side that is systematically longer
    teaches "longer is better"."""
    count = lambda turns: len(tokenizer(turns[-1]["content"], add_special_tokens=False)["input_ids"])
    chosen, rejected = [count(p["chosen"]) for p in pairs], [count(p["rejected"]) for p in pairs]
    longer = sum(c > r for c, r in zip(chosen, rejected))
    return {
        "chosen_tokens": describe(chosen),
        "rejected_tokens": describe(rejected),
        "share_chosen_longer": longer / len(pairs) if pairs else None,
    }


def plot_gaps(gaps: dict[str, list[float]], min_score_gap: float, path: str) -> None:
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for side, values in gaps.items():
        axes.hist(values, bins=30, alpha=0.6, label=f"{side} ({len(values)} prompts)")
    if min_score_gap > 0:
        axes.axvline(min_score_gap, color="black", linestyle="--", label=f"min_score_gap {min_score_gap}")
    axes.set_xlabel("score gap (chosen - rejected)")
    axes.set_ylabel("prompts")
    axes.legend()
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(path)


@report_input_errors("simpo-binarise")
def main(argv: list[str] | None = None) -> None:
    """`simpo-binarise`: a console script's return value is its exit status, so the summary is not returned."""
    binarise_main(argv)


def binarise_main(argv: list[str] | None = None) -> dict:
    """Binarise the annotations into OUTPUT_DIR/dataset; returns the summary written to summary.json."""
    model_args, _, args = parse_pipeline_args(argv, "simpo-binarise", DESCRIPTION)
    setup_logging(True)
    source, folder = os.path.join(args.output_dir, "annotations"), os.path.join(args.output_dir, "dataset")
    sides = previous_stage_sides(args.output_dir, "annotations", "simpo-annotate", "simpo-binarise", True)
    lock_folder(args.output_dir, "simpo-binarise")
    tokenizer = get_tokenizer(model_args)
    summary, all_gaps, binarised = {"min_score_gap": args.min_score_gap}, {}, {}
    for side in sides:  # every side is checked before anything is written
        rows = read_annotations(os.path.join(source, f"{side}.jsonl"))
        pairs, drops, all_gaps[side] = binarise(rows, args.min_score_gap)
        binarised[side] = rows, pairs, drops
        if not pairs:
            raise DataError(
                f"simpo-binarise: no {side} pair is left from {len(rows)} prompts (dropped: {dict(drops)}), so"
                f" nothing would train or evaluate on it. Lower min_score_gap ({args.min_score_gap}) or generate"
                " more samples per prompt (seeds)."
            )
    for side, (rows, pairs, drops) in binarised.items():
        write_jsonl(os.path.join(folder, f"{side}.jsonl"), pairs)
        summary[side] = {
            "prompts": len(rows),
            "pairs": len(pairs),
            "dropped": dict(drops),
            "score_gap": describe([p["score_chosen"] - p["score_rejected"] for p in pairs]),
            **length_stats(pairs, tokenizer),
        }
        logger.info(
            "%s: %d pairs from %d prompts; dropped: %s; chosen longer than rejected in %s of pairs",
            side,
            len(pairs),
            len(rows),
            dict(drops) or "none",
            summary[side]["share_chosen_longer"],
        )
    write_atomic(os.path.join(folder, "summary.json"), json.dumps(summary, indent=1))
    plot_gaps(all_gaps, args.min_score_gap, os.path.join(folder, "score_gaps.png"))
    logger.info(
        "Preference data in %s (dataset_mixer: {%s: 1.0}, dataset_splits: [%s])", folder, folder, ", ".join(sides)
    )
    return summary


if __name__ == "__main__":
    main()
