"""docs/outputs-and-diagnostics.md's example run summary is what a run of the tiny config prints: the same lines, in
the same order, with the same values but for the steps and the output folder (the run here is one step long)."""

import os
import re

import pytest
from conftest import REPO

from simpo.reporting.summary import RULE
from simpo.train.recipe import train_main

DOC = os.path.join(REPO, "docs", "outputs-and-diagnostics.md")
CONFIG = os.path.join(REPO, "training_configs", "tiny-simpo-cpu.yaml")
LABEL = re.compile(r"^  (\S.*?)\s{2,}(.*)$")


def summary_lines(text: str) -> dict:
    """label -> value of the start summary in `text` (the block between rules that opens on 'SimPO run')."""
    block = text.split(f"{RULE}\nSimPO run\n")[1].split(RULE)[0]
    return dict(LABEL.match(row).groups() for row in block.splitlines() if row.strip())


@pytest.mark.slow
def test_the_docs_example_summary_is_what_the_tiny_run_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    example = re.search(r"```\n(=+\nSimPO run\n.*?)```", open(DOC).read(), flags=re.S).group(1)
    documented = summary_lines(example)
    train_main([CONFIG, f"--output_dir={tmp_path}", "--max_steps=1", "--eval_strategy=no", "--eval_on_start=false"])
    printed = summary_lines(capsys.readouterr().out)
    assert list(documented) == list(printed)  # the labels, in order
    for label in set(printed) - {"steps", "output_dir"}:
        assert documented[label] == printed[label], label
    assert documented["output_dir"] == "outputs/tiny-simpo-cpu (reporting to tensorboard)"
