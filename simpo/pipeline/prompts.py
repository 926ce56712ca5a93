"""Prompts for generation, from any source the dataset mixer reads (hub id, save_to_disk folder, json/jsonl/parquet),
grouped as the mixer groups splits: names with "train" are training prompts (cut to the source's fraction), names
with "test" evaluation prompts (kept whole)."""

import json
import logging

from simpo.data.mixer import load_split, split_side, train_rows
from simpo.data.validation import message_list_problem
from simpo.errors import DataError

logger = logging.getLogger(__name__)


def prompt_turns(value, where: str) -> list[dict]:
    """A prompt cell -> the prompt's messages: a string is one user turn; a message list is used as given."""
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and message_list_problem(value) is None and value[-1]["role"] == "user":
        return value
    raise DataError(
        f"{where}: a prompt must be a non-empty string or a list of {{role, content}} messages ending with a user"
        f" turn, got {value!r:.200}. Fix the row or choose another prompt_column."
    )


def load_prompts(
    dataset_mixer: dict[str, float],
    splits: list[str],
    configs: list[str] | None,
    column: str,
    keep_columns: list[str] = (),
) -> dict[str, list[dict]]:
    """{side: [{"prompt": the cell as stored, "messages": its turns, and the `keep_columns`}]}, in source order,
    each prompt once per side (repeats are counted in the log and generated for once, with the first one's
    columns)."""
    if not dataset_mixer:
        raise DataError("dataset_mixer is empty: give at least one {source: fraction} of prompts.")
    configs = configs or [None] * len(dataset_mixer)
    sides: dict[str, list[dict]] = {}
    seen: dict[str, set] = {}
    for (source, fraction), config in zip(dataset_mixer.items(), configs):
        if not 0 < fraction <= 1:
            raise DataError(f"dataset_mixer['{source}'] = {fraction}: a fraction is in (0, 1].")
        for split in splits:
            side = split_side(split)
            dataset = load_split(source, split, config)
            if column not in dataset.column_names:
                raise DataError(
                    f"{source} [{split}] has no column '{column}' (it has {dataset.column_names}): set prompt_column."
                )
            missing = [name for name in keep_columns if name not in dataset.column_names]
            if missing:
                raise DataError(
                    f"{source} [{split}] has no column {missing} for keep_columns (it has {dataset.column_names})."
                )
            if side == "train":
                dataset = train_rows(dataset, fraction, source, split)
            kept = {name: dataset[name] for name in keep_columns}
            repeats = 0
            for index, value in enumerate(dataset[column]):
                turns = prompt_turns(value, f"{source} [{split}] row {index}")
                key = json.dumps(turns, sort_keys=True)
                if key in seen.setdefault(side, set()):
                    repeats += 1
                    continue
                seen[side].add(key)
                sides.setdefault(side, []).append(
                    {"prompt": value, "messages": turns, **{name: kept[name][index] for name in keep_columns}}
                )
            logger.info(
                "%s [%s]: %d prompts for %s (%d repeats skipped)", source, split, len(dataset) - repeats, side, repeats
            )
    for side in {split_side(split) for split in splits} - set(sides):
        raise DataError(f"No prompts for the {side} side: check dataset_mixer and dataset_splits.")
    return sides
