"""Verifiable rewards: simpo-annotate scores replies with a Python function instead of a reward model.

In the pipeline YAML, `reward_function: package.module:function` (exactly one of `reward_model` and
`reward_function`). The module is imported from the working directory or the installed packages. The function is
called once per reply as

    function(messages, reply, row) -> float | None

with the prompt's turns (a list of {role, content}), the reply (a string) and the whole generation row (`prompt`,
`messages`, `responses` and the prompt data's columns named in `keep_columns`, e.g. a reference `answer`). It
returns the score (a finite number; a bool counts as 1.0 / 0.0) or None: the reply is left unscored, as a reply too
long for a reward model is, and simpo-binarise leaves it out. NaN and infinities are errors that name the row: a
function that cannot score a reply should say so with None, not with a value that would silently order the pairs.

A function with the attribute `batched = True` is called with lists instead, `reward_batch_size` replies at a time,
`function(messages_list, replies, rows)`, and returns one score (or None) per reply: for scorers that pay a set-up
cost per call or run in parallel (a test runner, a remote judge). An exception raised by the function, or a value
that is not a score, stops simpo-annotate with the generations file, line, prompt_id (when the row has one) and
response it was scoring (for a batched function: the lines of the batch).

Scoring is resumable and data-parallel as a reward model's is (units of `reward_batch_size` replies, in
OUTPUT_DIR/annotations/units/); a relaunch with another function, or after the function's source file changed, is
refused (the old scores would mix with the new).

The examples below are ready to use: `exact_match` (a reply equal to the row's `answer`, e.g. a word reversed),
`math_answer` (the last number in the reply against a GSM8K-style `answer`, "... #### 42") and `code_tests`
(batched: the reply's Python code, with the row's `tests` appended, runs in a subprocess; 1.0 when it exits cleanly).
"""

import importlib
import inspect
import math
import numbers
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from simpo.errors import RewardFunctionError
from simpo.pipeline.work_units import Unit, UnitStore, check_settings, file_fingerprint, run_units


def load_reward_function(spec: str) -> Callable:
    """`package.module:function` (or `module:Class.attribute`) -> the callable."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise RewardFunctionError(f"reward_function '{spec}': expected 'package.module:function'.")
    if os.getcwd() not in sys.path:  # console scripts do not put the working directory on the path
        sys.path.append(os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardFunctionError(f"reward_function '{spec}': cannot import {module_name} ({err}).") from err
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RewardFunctionError(f"reward_function '{spec}': {module_name} has no '{attribute}'.")
        target = getattr(target, part)
    if not callable(target):
        raise RewardFunctionError(f"reward_function '{spec}' is a {type(target).__name__}, not a function.")
    return target


def source_fingerprint(function: Callable) -> str | None:
    """The function's source file as it is on disk: a changed function must not resume the old one's scores."""
    try:
        path = inspect.getsourcefile(inspect.unwrap(function))
    except TypeError:
        path = None
    return file_fingerprint(path) if path and os.path.exists(path) else None


def checked_score(value, spec: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, numbers.Real) and math.isfinite(value):
        return float(value)
    kind = "NaN or infinite" if isinstance(value, numbers.Real) else f"a {type(value).__name__}"
    raise RewardFunctionError(
        f"reward_function {spec} returned {value!r:.100} ({kind}) for {where}: a score is a finite number, or None"
        " to leave the reply unscored."
    )


def call_function(function: Callable, spec: str, items: list[tuple[list, str, dict]], where: list[str]) -> list:
    """Scores of (messages, reply, row) items, one call per item or one call for all when `function.batched`."""
    batched = getattr(function, "batched", False) is True
    if batched:
        place = where[0] if len(where) == 1 else f"the batch {where[0]} ... {where[-1]}"
        try:
            values = function(*map(list, zip(*items)))
        except Exception as err:
            raise RewardFunctionError(f"reward_function {spec} raised {type(err).__name__}: {err} on {place}.") from err
        if not isinstance(values, (list, tuple)) or len(values) != len(items):
            raise RewardFunctionError(
                f"reward_function {spec} is batched: it must return one score per reply ({len(items)}), got"
                f" {values!r:.100} on {place}."
            )
        return [checked_score(value, spec, at) for value, at in zip(values, where)]
    scores = []
    for item, at in zip(items, where):
        try:
            value = function(*item)
        except Exception as err:
            raise RewardFunctionError(f"reward_function {spec} raised {type(err).__name__}: {err} on {at}.") from err
        scores.append(checked_score(value, spec, at))
    return scores


def function_scores(args, sides: dict[str, list[dict]], source: str, folder: str) -> dict[str, list] | None:
    """{side: one score per reply, flat (reply k of row r at r * K + k)} on the main process, None on the others.
    Units of `reward_batch_size` replies in file order, resumable as the reward model's."""
    function = load_reward_function(args.reward_function)
    check_settings(
        folder,
        {
            "reward_function": [args.reward_function, source_fingerprint(function)],
            "reward_batch_size": args.reward_batch_size,
            "generations": {side: file_fingerprint(os.path.join(source, f"{side}.jsonl")) for side in sides},
        },
    )
    flat = {
        side: [(r, k) for r, row in enumerate(rows) for k in range(len(row["responses"]))]
        for side, rows in sides.items()
    }
    size = args.reward_batch_size
    units = [
        Unit(f"{side}/{b:06d}", side, tuple(range(i, min(i + size, len(pairs)))))
        for side, pairs in flat.items()
        for b, i in enumerate(range(0, len(pairs), size))
    ]

    def where(side: str, r: int, k: int) -> str:
        row = sides[side][r]
        prompt_id = f" (prompt_id {row['prompt_id']})" if "prompt_id" in row else ""
        seeds = args.seeds if len(args.seeds) == len(row["responses"]) else None
        seed = f", seed {seeds[k]}" if seeds else ""
        return (
            f"{os.path.join(source, side + '.jsonl')} line {r + 1}{prompt_id}, response {k + 1} of"
            f" {len(row['responses'])}{seed}"
        )

    def work(unit: Unit) -> list:
        pairs = [flat[unit.split][i] for i in unit.rows]
        rows = sides[unit.split]
        items = [(rows[r]["messages"], rows[r]["responses"][k], rows[r]) for r, k in pairs]
        return call_function(function, args.reward_function, items, [where(unit.split, r, k) for r, k in pairs])

    store = UnitStore(os.path.join(folder, "units"))
    if not run_units(units, store, work, desc="scoring"):
        return None
    scores = {side: [None] * len(pairs) for side, pairs in flat.items()}
    for unit in units:
        for i, value in zip(unit.rows, store.read(unit)):
            scores[unit.split][i] = value
    return scores


# Examples -----------------------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    return " ".join(str(text).split()).lower()


def exact_match(messages: list[dict], reply: str, row: dict) -> float:
    """1.0 when the reply equals the row's reference `answer` (whitespace and case aside), else 0.0. Needs
    `keep_columns: [answer]` in the pipeline YAML (the prompt data's `answer` column)."""
    return float(normalise(reply) == normalise(row["answer"]))


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def math_answer(messages: list[dict], reply: str, row: dict) -> float:
    """1.0 when the last number in the reply equals the reference: the row's `answer`, a number or a GSM8K-style
    solution ending with "#### 42" (its last number). A reply without a number scores 0.0."""
    reference = last_number(str(row["answer"]).split("####")[-1])
    if reference is None:
        raise ValueError(f"the row's answer {row['answer']!r:.80} holds no number")
    value = last_number(reply)
    return float(value is not None and math.isclose(value, reference, rel_tol=0, abs_tol=1e-6))


CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
CODE_TIMEOUT_S = 10


def run_code_tests(reply: str, tests: str) -> float:
    """1.0 when the reply's code (its first ```python block, else the whole reply) followed by `tests` exits with
    status 0 within CODE_TIMEOUT_S seconds, else 0.0."""
    block = CODE_BLOCK.search(reply)
    program = (block.group(1) if block else reply) + "\n\n" + tests + "\n"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "candidate.py")
        with open(path, "w") as f:
            f.write(program)
        try:
            done = subprocess.run(
                [sys.executable, "-I", path],
                cwd=folder,
                capture_output=True,
                timeout=CODE_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return 0.0
    return float(done.returncode == 0)


def code_tests(messages_list: list[list[dict]], replies: list[str], rows: list[dict]) -> list[float]:
    """Batched: each reply's Python code runs with its row's `tests` (e.g. assert statements) in a subprocess of
    its own, several at a time. Untrusted model output is executed: run this in a sandbox (a container without
    network or secrets), never on a machine you care about."""
    jobs = [(reply, row["tests"]) for reply, row in zip(replies, rows)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda job: run_code_tests(*job), jobs))


code_tests.batched = True
