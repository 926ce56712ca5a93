"""The headline numbers: the README's table, benchmarks/results/tiny_paper.md and the report they come from
(benchmarks/results/tiny_paper.json, written by `python scripts/run_tiny_paper.py --publish`) agree, and the report
says what produced it."""

import json
import os
import re

import pytest
from conftest import REPO
from test_tiny_paper import load_script

RESULTS = os.path.join(REPO, "benchmarks", "results", "tiny_paper")


@pytest.fixture(scope="module")
def report():
    with open(RESULTS + ".json") as f:
        return json.load(f)


def test_the_readme_table_is_the_committed_results(report):
    script = load_script()
    readme = open(os.path.join(REPO, "README.md")).read()
    assert script.readme_table(report) in readme, "README is stale: rerun python scripts/run_tiny_paper.py --publish"
    assert open(RESULTS + ".md").read() == script.markdown(report), "tiny_paper.md is not the rendering of its .json"
    # the table's numbers read back, row by row, against the report
    block = readme.split(script.README_START)[1].split(script.README_END)[0]
    rows = re.findall(
        r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([+-][\d.]+) \[([+-][\d.]+), ([+-][\d.]+)\] \|$", block, re.M
    )
    assert [row[0] for row in rows] == [str(seed) for seed in report["settings"]["seeds"]]
    for seed, sft, simpo, difference, low, high in rows:
        r = report["seeds"][seed]
        numbers = [r["sft_accuracy"], r["simpo_accuracy"], r["difference"], *r["ci95"]]
        assert [float(x) for x in (sft, simpo, difference, low, high)] == pytest.approx(numbers, abs=5e-4)
    for lr, run in report["seeds"][str(report["settings"]["seeds"][0])]["runs"].items():
        assert f"{script.rate(lr)} gains {round(100 * run['difference'])} points" in " ".join(block.split())


def test_the_results_are_the_published_setting_and_name_what_produced_them(report):
    script = load_script()
    assert {key: report["settings"][key] for key in script.PAPER} == script.PAPER
    assert report["settings"]["quick"] is False and report["heldout_prompts"] == 300
    made = report["produced_by"]
    assert re.fullmatch(r"[0-9a-f]{40}", made["commit"]) and made["uncommitted_changes"] == []
    for library in ("python", "torch", "transformers", "accelerate", "datasets", "trl", "simpo"):
        assert made["versions"][library], library
    text = open(RESULTS + ".md").read()
    assert made["commit"] in text and f"torch {made['versions']['torch']}" in text


def test_the_help_suggests_the_published_rates_each_above_sft(report, capsys):
    script = load_script()
    with pytest.raises(SystemExit):
        script.main(["--help"])
    suggested = re.search(r"--learning-rates ((?:[0-9.e-]+ ?)+)\]", capsys.readouterr().out).group(1).split()
    runs = report["seeds"][str(report["settings"]["seeds"][0])]["runs"]
    assert [float(lr) for lr in suggested] == script.PAPER["learning_rates"]
    for lr in suggested:
        assert runs[f"{float(lr):g}"]["difference"] > 0, f"--help suggests {lr}, which ends below SFT"
