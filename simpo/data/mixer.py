"""The dataset mixer: {source: fraction} over hub ids, save_to_disk folders and local json/jsonl/parquet files."""

import difflib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset, load_from_disk
from datasets.fingerprint import Hasher

from simpo.data.validation import MESSAGE_KEYS, role_and_content, row_origin, validate_rows
from simpo.errors import DataError

logger = logging.getLogger(__name__)


class RowFormat(NamedTuple):
    """One kind of training row: the columns kept, and the check that raises on a malformed row
    (validate(dataset, source, split, origins)), naming the row by its origin (file and line where it has them)."""

    columns: tuple[str, ...]
    validate: Callable


PREFERENCE_PAIRS = RowFormat(("prompt", "chosen", "rejected"), validate_rows)
# Where each row came from (validation.row_origin: file, 1-based line, 0-based index), carried through chat templating
# and tokenisation so that a dropped or cut row is reported as the row a user can find in their file.
ORIGIN = "origin"
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SIMPO_ROOT = Path(__file__).resolve().parent.parent  # the simpo package, every subpackage included


def simpo_sources() -> list[Path]:
    """Every module of the simpo package, in a stable order."""
    return sorted(SIMPO_ROOT.rglob("*.py"))


@functools.cache
def simpo_code_hash() -> str:
    """A hash of simpo's own source. datasets fingerprints a module's function by its name, not its code, so a map's
    cached rows would outlive an edit or upgrade of the code that made them."""
    return Hasher.hash([[str(path.relative_to(SIMPO_ROOT)), path.read_text()] for path in simpo_sources()])


def map_fingerprint(dataset: Dataset, *arguments) -> str:
    """The fingerprint of dataset.map(...) over this dataset with these arguments and today's simpo code."""
    return Hasher.hash([dataset._fingerprint, simpo_code_hash(), *arguments])


def is_blank(path: Path) -> bool:
    """Nothing but whitespace (an empty file, or one of blank lines)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def first_encoding_problem(path: Path) -> str | None:
    """Where a text file stops being UTF-8 (the line and byte), or None. pyarrow reads such a file without a word and
    fails later, when a row is read, naming no file."""
    offset = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return (
                    f"{path} line {number} (byte {offset + err.start}) is not UTF-8 ({err.reason}, byte"
                    f" 0x{line[err.start]:02x}): save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                )
            offset += len(line)
    return None


def first_json_problem(path: Path) -> str | None:
    """Where a json/jsonl file stops being JSON rows: the first line that is neither part of one JSON document nor a
    JSON object of its own (valid JSON that is not an object, e.g. `[1, 2]`, is no row either)."""
    text = path.read_text(errors="replace")
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), 1):
        try:
            value = line.strip() and json.loads(line)
        except json.JSONDecodeError as err:
            return f"{path} line {number}: {err.msg} (column {err.colno})"
        if line.strip() and not isinstance(value, dict):
            return f"{path} line {number}: a JSON {type(value).__name__}, not an object (one {{...}} row per line)"
    return None


def load_files(source: str, split: str, files: list[Path]) -> Dataset:
    if all(is_blank(f) for f in files):
        raise DataError(f"{source} [{split}] is empty: remove it from dataset_mixer or fix the data.")
    builder = FILE_BUILDERS.get(files[0].suffix, "json")
    if builder == "json":
        problem = next((p for p in map(first_encoding_problem, files) if p), None)
        if problem:
            raise DataError(f"{source} [{split}] cannot be read: {problem}.")
    try:
        return load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as err:  # datasets wraps the parser's error without the file or line
        problem = next((p for p in (first_json_problem(f) for f in files if builder == "json") if p), None)
        if problem:  # the file and line first, as for a malformed row
            raise DataError(f"{problem}. Fix the file ({source} [{split}] cannot be read as json).") from err
        detail = str(err).strip().splitlines()[-1]
        raise DataError(f"{source} [{split}] cannot be read as {builder}: {detail}. Fix the file.") from err


def json_row_lines(path: Path) -> list[int]:
    """The 1-based line each row of a json/jsonl file starts on: every non-blank line of JSON lines (datasets skips
    blank ones), or where each item of a top-level JSON array starts."""
    with open(path, "rb") as f:
        head = f.read(1 << 12).lstrip()
    if head.startswith(b"["):
        text, decoder, lines = path.read_text(encoding="utf-8"), json.JSONDecoder(), []
        at, line, counted = text.index("[") + 1, 1, 0
        while True:
            while at < len(text) and (text[at].isspace() or text[at] == ","):
                at += 1
            if at >= len(text) or text[at] == "]":
                return lines
            line += text.count("\n", counted, at)
            counted = at
            lines.append(line)
            _, at = decoder.raw_decode(text, at)
    with open(path, "rb") as f:
        return [number for number, text in enumerate(f, 1) if text.strip()]


def file_rows(files: list[Path], rows: int) -> list[tuple[str, int]] | None:
    """(file, 1-based line, or row of a parquet file) of each of the `rows` rows read from `files` in order; None
    when they cannot be told (a JSON document that is not one row per line or array item)."""
    located = []
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet

            count = pyarrow.parquet.ParquetFile(path).metadata.num_rows
            located += [(str(path), number) for number in range(1, count + 1)]
        else:
            located += [(str(path), number) for number in json_row_lines(path)]
    return located if len(located) == rows else None


def unsupported_format(path: Path) -> str:
    kind = path.suffix.lstrip(".").upper() or "a file without an extension"
    return (
        f"{kind} is not a supported format. simpo reads .jsonl/.json (one JSON object per row) and .parquet files,"
        " save_to_disk folders and hub ids: convert it, e.g. pandas.read_csv(path).to_json(out, orient='records',"
        " lines=True) for a CSV whose columns hold JSON message lists."
    )


def train_rows(dataset: Dataset, fraction: float, source: str, split: str) -> Dataset:
    """A train split's first `fraction` of rows (dataset_mixer's fraction); a fraction that selects none is an
    error, not an empty source."""
    count = int(fraction * len(dataset))
    if count == 0 and len(dataset):
        raise DataError(
            f"dataset_mixer['{source}'] = {fraction} selects 0 of the {len(dataset)} rows of [{split}]: raise the"
            f" fraction to at least {1 / len(dataset):.2g}."
        )
    return dataset.select(range(count))


def load_split(source: str, split: str, config: str | None = None) -> Dataset:
    """One split of one source. A local folder is a save_to_disk folder or holds files named SPLIT.jsonl/json/parquet
    (or SPLIT-*.parquet); a single local file is a train split; anything else is a hub id."""
    return load_located_split(source, split, config)[0]


def load_located_split(source: str, split: str, config: str | None = None) -> tuple[Dataset, list | None]:
    """load_split, and the (file, line) each row was read from (None for hub and save_to_disk datasets)."""
    path = Path(source)
    if path.is_file() and path.suffix not in FILE_BUILDERS:
        raise DataError(f"{source}: {unsupported_format(path)}")
    if path.is_file():
        if "train" not in split:
            raise DataError(
                f"{source}: a single file is a train split only; for '{split}' use a folder of split files."
            )
        dataset = load_files(source, split, [path])
        return dataset, file_rows([path], len(dataset))
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            saved = load_from_disk(str(path))
            if isinstance(saved, Dataset):
                return saved, None
            if split not in saved:
                raise DataError(f"{source}: no split '{split}' (it has {sorted(saved)}).")
            return saved[split], None
        files = sorted(p for p in path.iterdir() if p.suffix in FILE_BUILDERS and p.stem.split("-")[0] == split)
        if not files:
            others = sorted(p.name for p in path.iterdir() if p.stem.split("-")[0] == split)
            hint = f" {others[0]}: {unsupported_format(Path(others[0]))}" if others else ""
            raise DataError(f"{source}: no file for split '{split}' (expected {split}.jsonl, .json or .parquet).{hint}")
        if len({f.suffix for f in files}) > 1:
            raise DataError(
                f"{source}: split '{split}' has files in more than one format ({', '.join(f.name for f in files)}):"
                " keep one, or its rows would be read twice."
            )
        dataset = load_files(source, split, files)
        return dataset, file_rows(files, len(dataset))
    if looks_local(source):  # a mistyped folder: no Hub lookup (and its retries) for what is plainly a path
        raise DataError(missing_source(source, hub=None))
    try:
        return load_dataset(source, config, split=split), None
    except (FileNotFoundError, ConnectionError) as err:  # DatasetNotFoundError, offline or unreachable Hub
        raise DataError(missing_source(source, hub=err)) from err


def looks_local(source: str) -> bool:
    """A source that can only mean a local path: absolute, ./ ../ ~, a file name with a data extension, more than
    one slash (a hub id is org/name), or an org/name whose first part is a local folder (data/tiny-prefz)."""
    path = Path(os.path.expanduser(source))
    return (
        path.is_absolute()
        or source.startswith((".", "~"))
        or path.suffix in FILE_BUILDERS
        or source.count("/") > 1
        or (source.count("/") == 1 and path.parent.is_dir())
    )


def nearest_folder(path: Path) -> tuple[Path, list[str]]:
    """The deepest existing folder on the way to `path`, and its entry whose name is closest to the missing part
    (the likely typo), if one is close."""
    path = Path(os.path.abspath(os.path.expanduser(str(path))))
    folder = path.parent
    while not folder.is_dir():
        folder = folder.parent
    missing = path.relative_to(folder).parts[0]
    entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    return folder, difflib.get_close_matches(missing, entries, n=1, cutoff=0.6)


def missing_source(source: str, hub: Exception | None) -> str:
    """Why dataset_mixer's `source` could not be read: neither a local folder or file nor (hub: the Hub's error, None
    when it was not asked) a reachable Hub dataset, with the nearest folder that exists and its likely match."""
    folder, close = nearest_folder(Path(source))
    shown = os.path.relpath(folder) if not os.path.isabs(source) else str(folder)
    near = f"; nearest existing folder: {shown}/" + (
        f" (did you mean {os.path.join(shown, close[0])}?)" if close else ""
    )
    if hub is None:
        asked = "not looked up on the Hub, as it is a path"
    elif os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        asked = "not in the local Hub cache, and HF_HUB_OFFLINE is set"
    else:
        asked = f"the Hub has no such dataset or could not be reached ({str(hub).strip().splitlines()[0][:160]})"
    return (
        f"dataset_mixer source {source!r} is neither a local folder or file nor a reachable Hub dataset: looked for"
        f" the folder or file {os.path.abspath(os.path.expanduser(source))} (not found), {asked}{near}. Fix the"
        " name in dataset_mixer."
    )


def split_side(split: str) -> str:
    """The side a split feeds, by its name: "train" (e.g. train_prefs) or "test" (e.g. test_prefs)."""
    if "train" in split:
        return "train"
    if "test" in split:
        return "test"
    raise DataError(f"Split '{split}' names neither train nor test: rename it or drop it from dataset_splits.")


def require_eval_split(args, datasets, example: str) -> None:
    """Evaluation asked for without a test split stops the run before any model loads."""
    if not args.do_train and "test" not in datasets:
        raise DataError(
            f"do_train: false evaluates the model on the test split, but dataset_splits has none: add one"
            f" (e.g. {example})."
        )
    if (args.do_eval or args.eval_strategy != "no" or args.eval_on_start) and "test" not in datasets:
        raise DataError(
            "Evaluation is on (do_eval, eval_strategy or eval_on_start) but dataset_splits has no test split: add one"
            f' (e.g. {example}) or set do_eval: false, eval_strategy: "no" and eval_on_start: false.'
        )


def keep_role_and_content(dataset: Dataset) -> Dataset:
    """Message lists whose messages carry more keys than role and content (validation allowed only empty ones, e.g.
    `"tool_calls": []`) reduced to those two, so every source has the same columns and the chat template sees what
    the checks saw. A message with an extra key makes the column's type a JSON value, which nothing downstream reads."""
    extra = [
        column
        for column, feature in dataset.features.items()
        if hasattr(feature, "feature")
        and not (isinstance(feature.feature, dict) and set(feature.feature) == set(MESSAGE_KEYS))
    ]
    if not extra:
        return dataset
    return dataset.map(
        lambda row: {column: role_and_content(row[column]) for column in extra},
        new_fingerprint=map_fingerprint(dataset, "role_and_content", extra),
        desc="Keeping each message's role and content",
    )


def mix_datasets(
    dataset_mixer: dict[str, float],
    splits: list[str],
    configs: list[str] | None = None,
    seed: int = 42,
    row_format: RowFormat = PREFERENCE_PAIRS,
) -> DatasetDict:
    """Train splits are subsampled to their fraction (their first rows), test splits kept whole; each side is
    concatenated and shuffled. Malformed rows raise DataError. Every row keeps its origin (column ORIGIN).
    row_format says what a row is (preference pairs by default; simpo.sft.data.CONVERSATIONS for SFT)."""
    if not dataset_mixer:
        raise DataError("dataset_mixer is empty: give at least one {source: fraction}.")
    configs = configs or [None] * len(dataset_mixer)
    if len(configs) != len(dataset_mixer):
        raise DataError(f"dataset_configs has {len(configs)} entries for {len(dataset_mixer)} dataset_mixer sources.")
    parts = {"train": [], "test": []}
    for (source, fraction), config in zip(dataset_mixer.items(), configs):
        if not 0 < fraction <= 1:
            raise DataError(
                f"dataset_mixer['{source}'] = {fraction}: a fraction is in (0, 1], the share of the train split used"
                " (to repeat data, train more epochs instead)."
            )
        for split in splits:
            side = split_side(split)
            dataset, located = load_located_split(source, split, config)
            if side == "train":
                dataset = train_rows(dataset, fraction, source, split)
            origins = [
                row_origin(source, split, index, *(located[index] if located else ())) for index in range(len(dataset))
            ]
            row_format.validate(dataset, source, split, origins)
            dataset = dataset.select_columns([c for c in row_format.columns if c in dataset.column_names])
            dataset = keep_role_and_content(dataset)
            dataset = dataset.add_column(ORIGIN, origins)
            parts[side].append(dataset)
            logger.info("Using %d rows of %s [%s] for %s", len(dataset), source, split, side)
    mixed = DatasetDict({side: concatenate_datasets(ds).shuffle(seed=seed) for side, ds in parts.items() if ds})
    for side, dataset in mixed.items():
        if duplicates := count_duplicates(dataset, row_format.columns):
            logger.warning(
                "%d of the %d %s rows repeat an earlier row (identical %s): each copy is trained on as"
                " often as it appears. Deduplicate the data if that is not meant.",
                duplicates,
                len(dataset),
                side,
                ", ".join(row_format.columns),
            )
    return mixed


def row_keys(dataset: Dataset, columns: tuple[str, ...]):
    """One 16-byte digest per row, in order, of its `columns` (the row's content: not where it was read from)."""
    for row in dataset.select_columns([c for c in columns if c in dataset.column_names]):
        yield hashlib.blake2b(json.dumps(row, sort_keys=True).encode(), digest_size=16).digest()


def count_duplicates(dataset: Dataset, columns: tuple[str, ...]) -> int:
    """Rows whose `columns` (prompt, chosen and rejected; an SFT row's messages) equal an earlier row's."""
    seen, duplicates = set(), 0
    for key in row_keys(dataset, columns):
        duplicates += key in seen
        seen.add(key)
    return duplicates


def content_fingerprint(dataset: Dataset) -> str:
    """The fingerprint of a mixed split as read: its rows' content in their order (every column but ORIGIN). Unlike
    datasets' own fingerprint, it does not change with a file's path or modification time (data copied to another
    disk is the same data), and it changes with any row's content or the order the rows are trained in."""
    digest = hashlib.blake2b(digest_size=16)
    for key in row_keys(dataset, tuple(c for c in dataset.column_names if c != ORIGIN)):
        digest.update(key)
    return digest.hexdigest()
