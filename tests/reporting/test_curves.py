"""Curves, TensorBoard and the summaries after a short tiny run; simpo-plot on one run and on a sweep."""

import glob
import json
import logging
import re
import shutil
from types import SimpleNamespace

import matplotlib.image
import pytest
from refusals import refused

from simpo.evaluation.curves import compare_runs, main, plot_run
from simpo.reporting.curves import CURVES_FILE, plot_curves
from simpo.train.recipe import train_main
from simpo.train.reporting import RUN_PANELS


def history_series(history: list[dict], key: str):
    points = [(h["step"], h[key]) for h in history if key in h]
    return [s for s, _ in points], [v for _, v in points]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    train_main(
        [
            "training_configs/tiny-simpo-cpu.yaml",
            f"--output_dir={out}",
            "--max_steps=6",
            "--logging_steps=2",
            "--eval_steps=3",
            "--eval_strategy=steps",
            "--per_device_train_batch_size=4",
            "--per_device_eval_batch_size=50",
            "--report_to=tensorboard",
        ]
    )
    return out


def test_tiny_run_writes_curves_of_every_panel(run):
    png = run / CURVES_FILE
    image = matplotlib.image.imread(png)
    assert image.shape[:2] == (800, 1500)  # 2 x 3 panels of 5 x 4 inches at 100 dpi
    assert image.std() > 0.01  # not blank

    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    panels = plot_run(str(run), str(run / "again.png"))
    assert list(panels) == list(RUN_PANELS)  # every panel had data
    for title, keys in RUN_PANELS.items():
        drawn = {name: (xs, ys) for name, xs, ys in panels[title]}
        for key in keys:
            names = [key] if key == "learning_rate" else [key, "eval_" + key]
            for name in names:
                xs, ys = history_series(history, name)
                assert xs, name
                assert drawn[name] == (xs, ys), name
    # Train points at the logging steps, eval ones at eval_on_start and every eval_steps.
    assert dict((n, xs) for n, xs, _ in panels["loss"]) == {"loss": [2, 4, 6], "eval_loss": [0, 3, 6]}


def test_tiny_run_writes_tensorboard_events_and_throughput(run):
    events = glob.glob(str(run / "runs" / "*" / "events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in events:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {
        "train/loss",
        "train/rewards/margin_over_gamma",
        "train/lengths/chosen",
        "train/tokens/padding_share",
        "train/tokens/per_second",
        "eval/rewards/margin_over_gamma",
        "eval/loss",
    } <= tags

    results = json.loads((run / "train_results.json").read_text())
    assert results["train_tokens_per_second"] > 0
    assert results["global_batch_size"] == 4
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    train_logs = [h for h in history if "loss" in h]
    assert all(0 <= h["rewards/margin_over_gamma"] <= h["rewards/accuracies"] + 1e-9 for h in train_logs)
    assert all(0 <= h["tokens/padding_share"] < 1 and h["tokens/per_second"] > 0 for h in train_logs)


def test_simpo_plot_compares_the_eval_curves_of_several_runs(run, tmp_path, capsys):
    other = tmp_path / "run-lr2"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("*.safetensors", "runs"))
    out = tmp_path / "compare.png"
    assert main([str(run), str(other), "--out", str(out)]) == 0
    assert "compare.png" in capsys.readouterr().out
    assert matplotlib.image.imread(out).shape[:2] == (800, 1500)
    panels = compare_runs([str(run), str(other)], str(tmp_path / "again.png"))
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert [name for name, _, _ in panels["eval loss"]] == ["run", "run-lr2"]
    for _, xs, ys in panels["eval rewards/margin_over_gamma"]:
        assert (xs, ys) == history_series(history, "eval_rewards/margin_over_gamma")


def test_simpo_plot_one_dir_and_errors(tmp_path, capsys):
    state = {
        "log_history": [
            {"step": 0, "eval_loss": 0.7, "eval_rewards/accuracies": 0.5},
            {"step": 5, "loss": 0.69, "learning_rate": 1e-6, "rewards/accuracies": 0.4},
            {"step": 10, "loss": 0.6, "learning_rate": 5e-7, "rewards/accuracies": 0.7},
            {"step": 10, "eval_loss": 0.65, "eval_rewards/accuracies": 0.6},
            {"step": 10, "train_loss": 0.65, "train_runtime": 3.0},
        ]
    }
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / CURVES_FILE).is_file()
    panels = plot_run(str(tmp_path), str(tmp_path / "b.png"))
    assert set(panels) == {"loss", "accuracy and share of margins > gamma", "learning rate"}
    assert panels["loss"] == [("loss", [5, 10], [0.69, 0.6]), ("eval_loss", [0, 10], [0.7, 0.65])]
    refused(capsys, main, [str(tmp_path / "missing")], re.escape(f"No trainer_state.json in {tmp_path / 'missing'}"))


def test_a_plotting_failure_only_warns(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr("simpo.reporting.curves.plot_folder", broken)
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(is_main_process=True), args=SimpleNamespace(output_dir=str(tmp_path))
    )
    with caplog.at_level(logging.WARNING, logger="simpo.reporting.curves"):
        assert plot_curves(trainer, RUN_PANELS, "SimPO") is None
    assert "no fonts" in caplog.text and "simpo-plot" in caplog.text


def test_a_run_that_logged_nothing_says_how_to_get_curves(tmp_path, caplog):
    state = {"global_step": 4, "logging_steps": 10, "log_history": [{"step": 4, "train_runtime": 3.0}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(is_main_process=True), args=SimpleNamespace(output_dir=str(tmp_path))
    )
    with caplog.at_level(logging.WARNING, logger="simpo.reporting.curves"):
        assert plot_curves(trainer, RUN_PANELS, "SimPO") is None
    assert (
        "nothing was logged in its 4 steps (a log every 10 steps, no evaluation). Set logging_steps below the"
        " number of steps"
    ) in caplog.text
    assert "try simpo-plot" not in caplog.text  # it would fail the same way
