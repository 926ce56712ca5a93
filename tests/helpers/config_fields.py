"""The field walk: which config fields no code of simpo's reads."""

import dataclasses
import re
from pathlib import Path

from conftest import REPO
from transformers import TrainingArguments

# Every module of the package by its path under simpo/ (e.g. "train/loss.py"); readers: all but the two that declare
# the shared and the SimPO fields.
DECLARING = {"config/arguments.py", "train/config.py"}
SOURCES = {
    str(path.relative_to(Path(REPO) / "simpo")): path.read_text()
    for path in sorted((Path(REPO) / "simpo").rglob("*.py"))
}
READERS = {name: text for name, text in SOURCES.items() if name not in DECLARING}
INHERITED = {f.name for f in dataclasses.fields(TrainingArguments)}  # read by transformers' Trainer itself


def unread_fields(cls) -> list[str]:
    """Fields of ours that no code outside the config modules reads (as args.NAME, model_args.NAME, ...)."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in INHERITED
        and not any(re.search(rf"\b\w*args\.{f.name}\b", source) for source in READERS.values())
    ]
