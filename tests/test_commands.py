"""Every console command's --help opens on a sentence saying what it does, and every key it takes has help text."""

import dataclasses
import importlib
import re
import sys

import pytest
from conftest import REPO

from simpo.pipeline.config import OnPolicyArguments
from simpo.sft.recipe import SFT_ARGUMENTS
from simpo.train.config import SIMPO_ARGUMENTS


def console_commands() -> dict[str, str]:
    """name -> "module:function", as setup.py declares them."""
    text = open(f"{REPO}/setup.py").read()
    return dict(re.findall(r'"(simpo-[a-z-]+)=([a-z_.]+:[a-z_]+)"', text))


def test_setup_declares_the_eight_commands():
    assert sorted(console_commands()) == sorted(
        [
            "simpo-train",
            "simpo-sft",
            "simpo-plot",
            "simpo-generate",
            "simpo-annotate",
            "simpo-binarise",
            "simpo-eval-setup",
            "simpo-answer",
        ]
    )


@pytest.mark.parametrize("command", sorted(console_commands()))
def test_help_opens_on_what_the_command_does(command, monkeypatch, capsys):
    module, function = console_commands()[command].split(":")
    main = getattr(importlib.import_module(module), function)
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    text = capsys.readouterr().out
    first, _, rest = text.partition("\n\n")
    assert re.fullmatch(r"[A-Z][^\n]*(\n[^\n]+)*\.", first), first  # a sentence, not the usage line
    assert rest.startswith(f"usage: {command}"), rest[:80]


@pytest.mark.parametrize(
    "groups",
    [SIMPO_ARGUMENTS, SFT_ARGUMENTS, SIMPO_ARGUMENTS[:2] + (OnPolicyArguments,)],
    ids=["simpo-train", "simpo-sft", "pipeline"],
)
def test_every_key_has_help_text(groups):
    missing = [
        f"{cls.__name__}.{f.name}"
        for cls in groups
        for f in dataclasses.fields(cls)
        if f.init and not f.metadata.get("help", "").strip()
    ]
    assert missing == []
