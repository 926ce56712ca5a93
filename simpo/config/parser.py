"""Read a run's settings, a YAML file then `--key=value` overrides, into the config dataclasses.

Every value, from the file or the command line, is cast by the field's declared type, so a typo or a bad value
stops the run at start-up, naming the key, the value and where it came from.
"""

import argparse
import contextlib
import dataclasses
import difflib
import enum
import logging
import os
import re
import sys
import types
import typing
from typing import Any, Literal, Union

import yaml

from simpo.config import other_trainers
from simpo.errors import ConfigError

logger = logging.getLogger(__name__)

CLI = "command line"
_FLAG = object()  # a bare `--key` with no value
_NONE = ("none", "null")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")

# Keys of older YAMLs (transformers 4, the alignment handbook), only consulted for keys that are no dataclass field.
# Renamed ones are read as today's key, with a warning: old key -> (today's key, why).
LEGACY_KEYS = {
    "warmup_ratio": ("warmup_steps", "transformers 5 reads a warmup_steps below 1 as a ratio of the steps"),
    "evaluation_strategy": ("eval_strategy", "renamed in transformers"),
    "no_cuda": ("use_cpu", "renamed in transformers"),
    "max_seq_length": ("max_length", "TRL's old name (SFTConfig), renamed in TRL"),
}
# Keys that would do nothing: refused, saying what to use instead (a key a user sets must change something).
REMOVED_KEYS = {
    "overwrite_output_dir": "removed in transformers 5: output_dir is reused as is and a run resumes from its last"
    " checkpoint there; delete the key (or choose a new output_dir)",
    "logging_dir": "removed in transformers 5: set the TENSORBOARD_LOGGING_DIR environment variable instead",
    "save_safetensors": "removed in transformers 5: checkpoints are always safetensors; delete the key",
    "truncation_side": "simpo does not truncate with the tokenizer: truncation_mode says which end of a long prompt"
    " is kept (keep_end, like truncation_side: left; keep_start, like right)",
}
# transformers documents report_to "none" as "no integrations" but turns a None into [None]: keep the word.
_NONE_IS_A_WORD = {"report_to"}
# transformers documents resume_from_checkpoint as a folder or true (the newest checkpoint): YAML reads `true` as a
# boolean, the command line as a word; both reach the resume code as the word (simpo/run/resume.py).
_BOOL_IS_A_WORD = {"resume_from_checkpoint"}


class CommandParser(argparse.ArgumentParser):
    """argparse for the commands that take no YAML (simpo-plot, simpo-eval-setup, simpo-answer): --help opens on
    `summary`, a sentence saying what the command does, before the usage line."""

    def __init__(self, prog: str, summary: str, **kwargs):
        super().__init__(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.summary = summary

    def format_help(self) -> str:
        return f"{self.summary}\n\n{super().format_help()}"


MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice (PyYAML silently keeps the last one). A `<<: *anchor` merge
    is allowed, and the mapping's own keys override what it brings in (SafeLoader's flatten_mapping does the merge)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(f"Key '{key}' appears twice in {self.name} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 wants a dot in a float, so PyYAML reads 3e-7 as a string, also inside mappings whose values have no
# declared type (model_init_kwargs): read it as YAML 1.2 and JSON do.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+.0123456789")
)


def _name(tp) -> str:
    """A field's type as a user reads it: `bool | 'auto' | None`, `'sigmoid' | 'hinge'`, `dict[str, float] | None`."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_name(member) for member in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(value) for value in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _is(tp, kind) -> bool:
    return tp is kind or typing.get_origin(tp) is kind


def _coerce(value, tp):
    """Cast one value to `tp`; raises ValueError/TypeError saying why not."""
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if typing.get_origin(tp) in (Union, types.UnionType):
        if type(None) in args and (value is None or str(value).lower() in _NONE):
            return None
        members = [a for a in args if a is not type(None)]
        # On the command line "[a, b]" or "a,b" means a list and "{k: v}" a mapping, when the union offers one.
        if isinstance(value, str) and any(_is(m, list) for m in members) and (value[:1] == "[" or "," in value):
            value = _coerce(value, list)
        elif isinstance(value, str) and any(_is(m, dict) for m in members) and value[:1] == "{":
            value = _coerce(value, dict)
        reasons = []
        for member in members:  # the first member that takes the value wins
            try:
                return _coerce(value, member)
            except (ValueError, TypeError, yaml.YAMLError) as e:
                reasons.append(str(e))
        raise ValueError("; ".join(reasons))
    if value is None:
        raise ValueError("None is not allowed here")
    if typing.get_origin(tp) is Literal:
        for allowed in args:  # compare as text too: CLI values are strings
            if value == allowed or str(value) == str(allowed):
                return allowed
        raise ValueError("must be one of " + ", ".join(repr(a) for a in args))
    if tp is bool:
        word = str(value).lower() if isinstance(value, (bool, int, str)) else None
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise ValueError("use true/false, yes/no or 1/0")
    if isinstance(value, bool) and tp in (int, float, str):
        raise TypeError(f"a boolean is not accepted as {tp.__name__}")
    if tp is int:
        with contextlib.suppress(ValueError):
            return int(str(value))  # exact, even for big numbers
        with contextlib.suppress(TypeError, ValueError):
            if float(value).is_integer():  # "1e3", 2.0
                return int(float(value))
        raise ValueError("not a whole number")
    if tp is float and isinstance(value, (int, float, str)):
        return float(value)  # also reads "3e-7", which PyYAML leaves a string
    if tp is str and isinstance(value, (int, float, str)):
        return str(value)
    if _is(tp, list):
        if isinstance(value, str):
            value = yaml.load(value, _StrictLoader) if value[:1] == "[" else [v.strip() for v in value.split(",")]
        if not isinstance(value, list):
            raise TypeError("not a list")
        return [_coerce(v, args[0]) for v in value] if args else value
    if _is(tp, dict):
        if isinstance(value, str):
            value = yaml.load(value, _StrictLoader)  # YAML flow mapping, which JSON also is
        if not isinstance(value, dict):
            raise TypeError("not a mapping")
        return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()} if args else value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value is member or value in (member.value, member.name):
                return member
        raise ValueError("must be one of " + ", ".join(repr(m.value) for m in tp))
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(f"a {type(value).__name__} is not a {_name(tp)}")


def _read_cli(tokens: list[str]) -> dict:
    out, i = {}, 0
    while i < len(tokens):
        if not tokens[i].startswith("--"):
            raise ConfigError(f"Expected --key=value on the command line, got {tokens[i]!r}.")
        key, eq, value = tokens[i][2:].partition("=")
        key = key.replace("-", "_")
        if not eq:  # `--key value`, or a bare flag when no value follows
            has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
            value, i = (tokens[i + 1] if has_value else _FLAG), i + has_value
        if key in out:
            raise ConfigError(f"Key '{key}' given twice on the command line.")
        out[key], i = value, i + 1
    return out


def _rename_legacy(values: dict, fields: set, source: str, problems: list[str]) -> dict:
    """values with older keys read as today's (a warning each); keys that would do nothing go to `problems`."""
    out = {}
    for key, value in values.items():
        if key in REMOVED_KEYS and key not in fields:
            problems.append(f"Config key '{key}' ({source}) is not used: {REMOVED_KEYS[key]}.")
            continue
        if key in fields or key not in LEGACY_KEYS:
            out[key] = value
            continue
        new, why = LEGACY_KEYS[key]
        if new in values:
            problems.append(f"Both '{key}' and '{new}' are set ({source}); '{key}' is the old name: keep '{new}'.")
            continue
        too_big = False  # as warmup_steps, a ratio of 1 or more would count steps
        with contextlib.suppress(TypeError, ValueError):  # a bad number is reported by the cast, later
            too_big = key == "warmup_ratio" and float(value) >= 1
        if too_big:
            problems.append(f"warmup_ratio={value!r} ({source}) must be below 1; use warmup_steps for steps.")
            continue
        done = f"read as {new}" + ("" if value is _FLAG else f"={value!r}")
        logger.warning("Config key '%s' (%s) is obsolete and %s: %s.", key, source, done, why)
        out[new] = value
    return out


def described_keys(cls, hidden_keys: frozenset = frozenset(), only: set | None = None) -> list[tuple]:
    """(key, type, default, help) of every key of the dataclass `cls` (those in `only` when given; hidden_keys: the
    ones the command refuses): what --help prints and docs/configuration.md lists."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if f.init and f.name not in hidden_keys and (only is None or f.name in only):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            keys.append((f.name, _name(hints[f.name]), default, f.metadata.get("help", "")))
    return keys


def usage(dataclass_types, prog: str, hidden_keys: frozenset = frozenset(), description: str = "") -> str:
    """The --help text: what the command does, then every key it takes (hidden_keys: the ones it refuses), its type,
    default and help."""
    lines = [f"usage: {prog} CONFIG.yaml [--key=value | --key value ...]"]
    if description:
        lines.insert(0, description + "\n")
    for cls in dataclass_types:
        lines.append(f"\n{cls.__name__}:")
        for key, kind, default, help_text in described_keys(cls, hidden_keys):
            lines.append(f"  --{key} ({kind}, default {default!r}) {help_text}")
    return "\n".join(lines)


def parse_args(
    argv: list[str] | None,
    dataclass_types: tuple,
    prog: str = "simpo",
    hidden_keys: frozenset = frozenset(),
    description: str = "",
) -> tuple:
    """`[config.yaml] [--key=value | --key value | --bool_flag]...` -> one instance per dataclass (the caller's
    argument groups, in order). --help prints `description` and every key."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(usage(dataclass_types, prog, hidden_keys, description))
        raise SystemExit(0)
    if not argv:  # nothing to run: say how, as argparse does, before anything is set up or written
        print(
            f"usage: {prog} CONFIG.yaml [--key=value | --key value ...]\n{prog}: error: give a config YAML"
            f" (e.g. training_configs/tiny-simpo-cpu.yaml); `{prog} --help` lists every key.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    owners = {}  # key -> [(dataclass index, type)]; a key of several dataclasses feeds them all
    defaults = {}
    for n, cls in enumerate(dataclass_types):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                owners.setdefault(f.name, []).append((n, hints[f.name]))
                defaults.setdefault(f.name, f.default)

    sources = []
    if argv and not argv[0].startswith("--"):
        path = argv.pop(0)
        if not path.endswith((".yaml", ".yml")):
            raise ConfigError(f"The first argument must be a .yaml/.yml file, got {path!r}.")
        sources.append((read_yaml(path), path))
    sources.append((_read_cli(argv), CLI))

    problems = []  # every bad key and value, named in one error
    merged = {}  # key -> (value, source); the command line, read last, overrides the file
    unknown = []
    for values, source in sources:
        for key, value in _rename_legacy(values, set(owners), source, problems).items():
            if key not in owners:
                unknown.append((key, value, source))
                continue
            merged[key] = (value, source)
    # another trainer's keys are translated with the values the config gives (simpo_gamma needs its beta)
    given = {key: value for key, (value, _) in merged.items()} | {key: value for key, value, _ in unknown}
    config = other_trainers.Config(given, defaults)
    problems += [unknown_key(key, source, owners, value, config) for key, value, source in unknown]

    kwargs = [{} for _ in dataclass_types]
    for key, (value, source) in merged.items():
        for n, tp in owners[key]:
            if value is _FLAG:
                if not (tp is bool or bool in typing.get_args(tp)):
                    problems.append(f"'--{key}' needs a value ({source}): expected {_name(tp)}.")
                    continue
                kwargs[n][key] = True
            elif key in _NONE_IS_A_WORD and (value is None or str(value).lower() in _NONE):
                kwargs[n][key] = "none"
            elif key in _BOOL_IS_A_WORD and isinstance(value, bool):
                kwargs[n][key] = str(value).lower()
            else:
                try:
                    kwargs[n][key] = _coerce(value, tp)
                except (ValueError, TypeError, yaml.YAMLError) as e:
                    problems.append(
                        f"Bad value {value!r} for '{key}' ({source}): expected {_name(tp)}; {e}."
                        + other_trainers.value_translation(key, value)
                        + mapping_form(key, value, tp)
                    )
    if problems:
        raise ConfigError(*problems)
    built = []
    for cls, kw in zip(dataclass_types, kwargs):
        try:
            built.append(build(cls, kw))
        except ConfigError as error:  # each group's own checks: collected, so that one run names them all
            problems += error.problems
    if problems:
        raise ConfigError(*problems)
    return tuple(built)


def mapping_form(key: str, value, tp) -> str:
    """' Write it as {...}' for a plain word given to a mapping key (`--dataset_mixer=data/mine`), or ''."""
    members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    mapping = next((m for m in members if _is(m, dict)), None)
    if mapping is None or not isinstance(value, str) or value.lstrip()[:1] == "{":
        return ""
    args = typing.get_args(mapping)
    form = f"{{{value}: 1.0}}" if args and args[1] is float else f"{{{value}: VALUE}}"
    return f" Write it as a mapping: {key}: {form} in YAML, --{key}='{form}' on the command line."


def unknown_key(key, source: str, known, value=None, config: other_trainers.Config | None = None) -> str:
    """The refusal of a key no dataclass has: another trainer's key with what it is here, else the closest key."""
    translated = config and other_trainers.translation(str(key), value, config, known)
    if translated:
        return f"Unknown config key '{key}' ({source}): {translated}."
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown config key '{key}' ({source}).{hint}"


# What PyYAML's own messages leave a user to work out, by what it says is wrong.
YAML_HINTS = (
    ("'\\t'", "YAML indents with spaces: replace the tab(s) with spaces"),
    (
        "could not determine a constructor for the tag",
        "simpo reads plain YAML (strings, numbers, true/false, null, lists and mappings): remove the !! tag",
    ),
    ("expected ',' or ']'", "close the [ list with ] (on the line it opens, or quote a value that starts with [)"),
    ("expected ',' or '}'", "close the { mapping with } (on the line it opens, or quote a value that starts with {)"),
)


def read_yaml(path: str) -> dict:
    """The YAML file's mapping of key: value; a file that cannot be read or is no such mapping is a ConfigError that
    names the file, the line and column, and what to change."""
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.load(f, _StrictLoader)
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.{nearest_file(path)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"Config file {path} cannot be read: {err}.") from None
    except yaml.YAMLError as err:
        raise ConfigError(yaml_problem(path, err)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value (it holds a {type(loaded).__name__}).")
    return loaded


def yaml_problem(path: str, err: yaml.YAMLError) -> str:
    """One line: the file, where PyYAML found the problem (where an unclosed list or mapping opened, for those),
    what it says, and the fix."""
    mark = getattr(err, "context_mark", None) or getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    said = " ".join(str(part) for part in (getattr(err, "context", None), getattr(err, "problem", None)) if part)
    said = said or str(err)
    hint = next((hint for sign, hint in YAML_HINTS if sign in str(err)), "check the YAML syntax there")
    return f"{path} is not valid YAML{where}: {said}; {hint}."


def nearest_file(path: str) -> str:
    """' Did you mean ...?' for the closest YAML file beside where `path` points, or ''."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        return f" (there is no folder {folder})"
    names = [name for name in os.listdir(folder) if name.endswith((".yaml", ".yml"))]
    close = difflib.get_close_matches(os.path.basename(path), names, n=1)
    return f" Did you mean {os.path.join(os.path.dirname(path), close[0])}?" if close else ""


def build(cls, kwargs: dict):
    """cls(**kwargs); a value its checks refuse (a ValueError from __post_init__, simpo's or transformers') is a
    ConfigError, reported like every other bad key."""
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from error
