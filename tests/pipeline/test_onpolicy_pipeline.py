"""The on-policy pipeline for real, on CPU: the tiny Llama as policy, the tiny random reward model, prompts from a
folder of jsonl files. generate -> annotate -> binarise -> a short SimPO run; generate and annotate killed (SIGKILL)
midway and relaunched give byte-identical output; generation in 2 processes under `accelerate launch` splits the
prompts without duplicates or losses (and gives the same bytes too).

Each step runs as its own process (as users run it), with one thread each, as under `accelerate launch`.
"""

import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY_DATA, TINY_MODEL
from refusals import refused
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from simpo.data.mixer import mix_datasets
from simpo.pipeline import binarise, generate
from simpo.pipeline.annotate import conversation_ids
from simpo.train.recipe import train_main

PIPELINE = "onpolicy_configs/tiny-cpu.yaml"  # seeds 13, 21, 42
TINY_REWARD = os.path.join(REPO, "assets", "tiny-reward")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
GENERATION_UNITS = (5 + 2) * 3  # train: 20 prompts / 4 a batch, test: 6 / 4; 3 seeds
SCORING_UNITS = (20 * 3 + 6 * 3) // 2  # responses / 2 a batch


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """20 distinct train prompts (one given twice) and 6 test prompts, a prompt column and nothing else."""
    folder = tmp_path_factory.mktemp("prompts")
    rows = [json.loads(line) for line in open(os.path.join(TINY_DATA, "train.jsonl"))]
    train = [r["prompt"] for r in rows[:20]] + [rows[3]["prompt"]]
    test = [json.loads(line)["prompt"] for line in open(os.path.join(TINY_DATA, "test.jsonl"))][:6]
    for name, items in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in items))
    return folder


def pipeline_args(prompts, out) -> list[str]:
    return [
        PIPELINE,
        f"--dataset_mixer={{{prompts}: 1.0}}",
        f"--output_dir={out}",
        "--max_tokens=12",
        "--generation_batch_size=4",
        "--reward_batch_size=2",
    ]


def run(module, argv, log) -> str:
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=ENV, stdout=f, stderr=f, timeout=600)
    output = open(log).read()
    assert proc.returncode == 0, output[-5000:]
    return output


def unit_files(out, step) -> list[str]:
    return glob.glob(os.path.join(out, step, "units", "**", "*.json"), recursive=True)


def kill_midway(module, argv, out, step, log, at_least=3) -> int:
    """Start the step, SIGKILL it once `at_least` units are on disk; the number of units it left behind."""
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO, env=ENV, stdout=f, stderr=f)
        deadline = time.time() + 600
        while len(unit_files(out, step)) < at_least:
            assert proc.poll() is None and time.time() < deadline, open(log).read()[-5000:]
            time.sleep(0.005)
        proc.kill()
        proc.wait()
    return len(unit_files(out, step))


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def uninterrupted(prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    generate_log = run("simpo.pipeline.generate", pipeline_args(prompts, out), out / "generate.log")
    run("simpo.pipeline.annotate", pipeline_args(prompts, out), out / "annotate.log")
    summary = binarise.binarise_main(pipeline_args(prompts, out))
    return out, generate_log, summary


@pytest.mark.slow
def test_pipeline_end_to_end_then_simpo_trains_on_the_result(uninterrupted, prompts, tmp_path):
    out, generate_log, summary = uninterrupted
    assert re.search(r"generating \(process 0 of 1\):\s+\d+%.*<\d\d:\d\d", generate_log)  # a bar with an ETA

    generations = {side: read_rows(out / "generations" / f"{side}.jsonl") for side in ("train", "test")}
    expected = {side: [json.loads(line)["prompt"] for line in open(prompts / f"{side}.jsonl")] for side in generations}
    assert [r["prompt"] for r in generations["train"]] == expected["train"][:20]  # the repeat generated for once
    assert [r["prompt"] for r in generations["test"]] == expected["test"]
    assert all(len(r["responses"]) == 3 for rows in generations.values() for r in rows)
    assert len({r["responses"][0] for r in generations["train"]}) > 1  # really sampled

    # Scores: the reward model on each conversation alone, unpadded.
    annotations = read_rows(out / "annotations" / "test.jsonl")
    tok, model = (
        AutoTokenizer.from_pretrained(TINY_REWARD),
        AutoModelForSequenceClassification.from_pretrained(TINY_REWARD).eval(),
    )
    for row in annotations[:2]:
        assert {k: v for k, v in row.items() if k != "scores"} == generations["test"][annotations.index(row)]
        with torch.no_grad():
            alone = [
                model(torch.tensor([conversation_ids(row, reply, tok)])).logits[0, 0].item()
                for reply in row["responses"]
            ]
        assert row["scores"] == pytest.approx(alone, abs=1e-5)

    # Pairs: best vs worst; every prompt is a pair or a counted drop.
    for side in ("train", "test"):
        pairs = read_rows(out / "dataset" / f"{side}.jsonl")
        assert summary[side]["pairs"] == len(pairs)
        assert len(pairs) + sum(summary[side]["dropped"].values()) == len(generations[side])
        scored = {r["prompt"]: r for r in read_rows(out / "annotations" / f"{side}.jsonl")}
        for pair in pairs:
            row = scored[pair["prompt"]]
            assert pair["score_chosen"] == max(row["scores"]) and pair["score_rejected"] == min(row["scores"])
            assert pair["chosen"][-1]["content"] == row["responses"][row["scores"].index(max(row["scores"]))]

    mixed = mix_datasets({str(out / "dataset"): 1.0}, ["train", "test"])
    assert len(mixed["train"]) == summary["train"]["pairs"] and len(mixed["test"]) == summary["test"]["pairs"]
    run_dir = tmp_path / "simpo"
    train_main(
        [
            "training_configs/tiny-simpo-cpu.yaml",
            f"--dataset_mixer={{{out / 'dataset'}: 1.0}}",
            f"--output_dir={run_dir}",
            "--max_steps=3",
            "--per_device_train_batch_size=4",
            "--report_to=none",
            "--eval_on_start=false",
            "--eval_strategy=no",
            "--save_strategy=no",
        ]
    )
    results = json.loads((run_dir / "train_results.json").read_text())
    assert math.isfinite(results["train_loss"]) and results["train_samples"] == summary["train"]["pairs"]
    trained = AutoModelForCausalLM.from_pretrained(run_dir).model.norm.weight
    assert not torch.equal(trained, AutoModelForCausalLM.from_pretrained(TINY_MODEL).model.norm.weight)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "folder", "units"),
    [
        ("simpo.pipeline.generate", "generations", GENERATION_UNITS),
        ("simpo.pipeline.annotate", "annotations", SCORING_UNITS),
    ],
)
def test_a_step_killed_midway_resumes_to_the_same_output(uninterrupted, prompts, tmp_path, step, folder, units):
    baseline = uninterrupted[0]
    out = tmp_path / "killed"
    if step == "simpo.pipeline.annotate":  # it scores the uninterrupted run's generations
        shutil.copytree(baseline / "generations", out / "generations", ignore=shutil.ignore_patterns("units"))
    left = kill_midway(step, pipeline_args(prompts, out), out, folder, tmp_path / "killed.log")
    assert 3 <= left < units and not (out / folder / "train.jsonl").exists()
    log = run(step, pipeline_args(prompts, out), tmp_path / "resumed.log")
    assert f"resuming, {left} of {units} units already done" in log
    for side in ("train", "test"):
        name = f"{folder}/{side}.jsonl"
        assert (out / name).read_bytes() == (baseline / name).read_bytes()


def test_a_relaunch_with_other_sampling_settings_is_refused(uninterrupted, prompts, tmp_path, capsys):
    out = tmp_path / "changed"
    shutil.copytree(uninterrupted[0] / "generations", out / "generations")
    refused(
        capsys,
        generate.main,
        [*pipeline_args(prompts, out), "--temperature=1.0"],
        r"holds a run with other settings \(temperature; e.g. temperature: 0.8 then",
    )


@pytest.mark.slow
def test_two_processes_split_the_prompts_without_duplicates_or_losses(uninterrupted, prompts, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "accelerate_configs/ddp_cpu.yaml",
        "--main_process_port",
        "0",
        "-m",
        "simpo.pipeline.generate",
        *pipeline_args(prompts, out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert "2 process(es)" in proc.stdout + proc.stderr

    done, by_process = [], {0: 0, 1: 0}
    for path in unit_files(out, "generations"):
        unit = json.load(open(path))
        side, seed = os.path.relpath(path, out / "generations" / "units").split(os.sep)[:2]
        done += [(side, seed, record["row"]) for record in unit["records"]]
        by_process[unit["process"]] += 1
    assert len(done) == len(set(done)) == (20 + 6) * 3  # every (prompt, seed) once
    assert sorted(by_process.values()) == [GENERATION_UNITS // 2, GENERATION_UNITS - GENERATION_UNITS // 2]
    for side in ("train", "test"):
        name = f"generations/{side}.jsonl"
        assert (out / name).read_bytes() == (uninterrupted[0] / name).read_bytes()


@pytest.mark.slow
def test_a_generations_file_cut_mid_line_is_named_and_simpo_generate_rewrites_it(
    uninterrupted, prompts, tmp_path, capsys
):
    from simpo.pipeline.annotate import main as annotate_main
    from simpo.run.folder_lock import unlock_folder

    out = tmp_path / "cut"
    shutil.copytree(uninterrupted[0] / "generations", out / "generations")
    path = out / "generations" / "train.jsonl"
    whole = path.read_bytes()
    lines = whole.count(b"\n")
    path.write_bytes(whole[: whole.rindex(b"\n", 0, len(whole) - 1) + 20])  # the last row cut after 19 bytes
    refused(
        capsys,
        annotate_main,
        pipeline_args(prompts, out),
        rf"^{path} line {lines} is not a whole JSON row .* Rerun simpo-generate with the same config: it keeps its"
        " finished units and rewrites this file",
    )
    assert not (out / "annotations").exists()
    unlock_folder(str(out))  # held by this (test) process until it ends, as by a command's process
    run("simpo.pipeline.generate", pipeline_args(prompts, out), tmp_path / "generate.log")  # every unit is done
    assert path.read_bytes() == whole
