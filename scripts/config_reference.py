"""Write the key reference of docs/configuration.md from the config dataclasses themselves, so that it cannot drift:
every key simpo declares, for each command, with its type, default and help (the text `--help` prints).

    python scripts/config_reference.py          # rewrites the block between the markers in docs/configuration.md
    python scripts/config_reference.py --check  # exits 1 when the block is not what the dataclasses say

tests/test_docs.py runs the check.
"""

import dataclasses
import os
import sys

from transformers import TrainingArguments
from trl import SFTConfig

from simpo.config.arguments import DataArguments, ElasticResumeArguments, ModelArguments
from simpo.config.parser import described_keys
from simpo.pipeline.config import USED_TRAINING_KEYS, OnPolicyArguments
from simpo.sft.config import REFUSED, SFTRunConfig
from simpo.train.config import SimPOConfig

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "configuration.md")
START = "<!-- key reference: written by scripts/config_reference.py from the config dataclasses; do not edit -->"
END = "<!-- end of the key reference -->"


def declared_by(cls, base) -> set[str]:
    """The fields `cls` declares or redefines itself (with its own help), not those it inherits from `base`."""
    own = set()
    for klass in cls.__mro__:
        if klass is base:
            break
        own |= set(getattr(klass, "__annotations__", {}))
    return own | {f.name for f in dataclasses.fields(ElasticResumeArguments)}


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(cls, only: set | None = None) -> list[str]:
    rows = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for key, kind, default, help_text in described_keys(cls, only=only):
        rows.append(f"| `{key}` | {cell(kind)} | `{cell(repr(default))}` | {cell(help_text)} |")
    return rows


def reference() -> str:
    simpo_keys = declared_by(SimPOConfig, TrainingArguments)
    sft_keys = declared_by(SFTRunConfig, SFTConfig)
    lines = [
        START,
        "",
        "### simpo-train and simpo-sft: the model (`ModelArguments`, `simpo/config/arguments.py`)",
        "",
        *table(ModelArguments),
        "",
        "### simpo-train and simpo-sft: the data (`DataArguments`, `simpo/config/arguments.py`)",
        "",
        *table(DataArguments),
        "",
        "### simpo-train: SimPO's training keys (`SimPOConfig`, `simpo/train/config.py`)",
        "",
        "Besides these, every key of `transformers.TrainingArguments` (learning rate, schedule, batch sizes, saving,",
        "logging, precision, ...), as transformers documents it.",
        "",
        *table(SimPOConfig, simpo_keys),
        "",
        "### simpo-sft: the SFT stage's own keys (`SFTRunConfig`, `simpo/sft/config.py`)",
        "",
        "Besides these, every key of TRL's `SFTConfig` but "
        + ", ".join(f"`{key}`" for key in sorted(REFUSED))
        + ", which are refused or fixed ([sft.md](sft.md)).",
        "",
        *table(SFTRunConfig, sft_keys),
        "",
        "### simpo-generate, simpo-annotate, simpo-binarise (`OnPolicyArguments`, `simpo/pipeline/config.py`)",
        "",
        "With these model and data keys of the tables above: "
        + ", ".join(f"`{key}`" for key in sorted(USED_TRAINING_KEYS))
        + "; the others are refused.",
        "",
        *table(OnPolicyArguments),
        "",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    if START not in text or END not in text:
        print(f"{DOC} has no key reference block ({START!r} ... {END!r})", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    written = head + reference() + tail
    if "--check" in argv:
        if written != text:
            print(f"{DOC}'s key reference is not what the dataclasses say: run python scripts/config_reference.py")
            return 1
        return 0
    with open(DOC, "w", encoding="utf-8") as f:
        f.write(written)
    print(f"Wrote the key reference of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
