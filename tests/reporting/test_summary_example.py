"""docs/outputs-and-diagnostics.md's example run summary is what a run of the tiny config prints: the same lines, in
the same order, with the same values but for the steps and the output folder (the run here is one step long) and the
self-check's measured figures (its seconds and its largest difference)."""

import os
import re

import pytest
from conftest import REPO

from simpo.reporting.summary import RULE
from simpo.train.recipe import train_main

DOC = os.path.join(REPO, "docs", "outputs-and-diagnostics.md")
CONFIG = os.path.join(REPO, "training_configs", "tiny-simpo-cpu.yaml")
LABEL = re.compile(r"^  (\S.*?)\s{2,}(.*)$")
CONTINUED = re.compile(r"^ {3,}(\S.*)$")  # a value's next line, under the values (no label)
MEASURED = re.compile(r"\d+\.\d+ s on|\d\.\d+e-\d+")  # the self-check's seconds and differences


def summary_lines(text: str) -> dict:
    """label -> value of the start summary in `text` (the block between rules that opens on 'SimPO run'); a value
    over several lines is one value, its lines joined by newlines."""
    block = text.split(f"{RULE}\nSimPO run\n")[1].split(RULE)[0]
    values = {}
    for row in filter(str.strip, block.splitlines()):
        if labelled := LABEL.match(row):
            label, values[labelled[1]] = labelled[1], labelled[2]
        else:
            values[label] += "\n" + CONTINUED.match(row)[1]
    return values


@pytest.mark.slow
def test_the_docs_example_summary_is_what_the_tiny_run_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    example = re.search(r"```\n(=+\nSimPO run\n.*?)```", open(DOC).read(), flags=re.S).group(1)
    documented = summary_lines(example)
    train_main([CONFIG, f"--output_dir={tmp_path}", "--max_steps=1", "--eval_strategy=no", "--eval_on_start=false"])
    printed = summary_lines(capsys.readouterr().out)
    assert list(documented) == list(printed)  # the labels, in order
    for label in set(printed) - {"steps", "output_dir", "self-check"}:
        assert documented[label] == printed[label], label
    assert MEASURED.sub("#", documented["self-check"]) == MEASURED.sub("#", printed["self-check"])
    assert "every path checked agrees" in printed["self-check"]
    assert documented["output_dir"] == "outputs/tiny-simpo-cpu (reporting to tensorboard)"
