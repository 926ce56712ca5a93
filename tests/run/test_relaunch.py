"""The relaunch rule (simpo/run/relaunch.py, docs/bad-input-and-resume.md): a relaunch that matches what its checkpoint
was trained with resumes; one that differs is refused before anything loads, listing the differences; with
resume_with_changes it continues with the changes applied for real. The runs are the tiny SimPO and SFT configs in
process, compared with fresh runs: the learning rate each step logged, and the final weights bit for bit."""

import json
import logging
import re
import shutil
import signal

import pytest
from conftest import TINY_DATA, TINY_MODEL
from refusals import refused
from tiny_runs import (
    SAVE_EVERY_2,
    SFT,
    SIMPO,
    FirstRates,
    SignalAt,
    assert_same_weights,
    cli,
    logged_rates,
    sft_main,
    simpo_main,
)

from simpo.run.record import RECORD_FILE, read_record
from simpo.run.relaunch import HISTORY_FILE

pytestmark = pytest.mark.slow  # each test trains the tiny model a few times (about 5-10 s a run on 2 cores)


@pytest.mark.parametrize("recipe", ["simpo", "sft"])
def test_a_new_learning_rate_is_refused_then_applied_from_the_resumed_step(tmp_path, capsys, caplog, recipe):
    """The issue's case: 2 steps at 3e-3, relaunched with 1e-5 and 4 steps. Refused before the data loads; with
    resume_with_changes, steps 3 and 4 run at the fresh 1e-5 run's rates (before: the old schedule's tail, 0 and 7.5e-4)
    and the weights are those of a run trained at the old rates for 2 steps and the new schedule after."""
    main, base = (simpo_main, SIMPO) if recipe == "simpo" else (sft_main, SFT)
    out, fresh, switched = tmp_path / "run", tmp_path / "fresh", tmp_path / "switched"
    old, new = ["--learning_rate=3e-3", "--max_steps=2"], ["--learning_rate=1e-5", "--max_steps=4"]
    assert main([*base, *SAVE_EVERY_2, *old, f"--output_dir={out}"]) == 0
    first = logged_rates(out)

    caplog.clear()
    message = refused(capsys, cli(main), [*base, *SAVE_EVERY_2, *new, f"--output_dir={out}"], "^The finished run in")
    assert "max_steps: 2 -> 4" in message and "learning_rate: 0.003 -> 1e-05" in message
    assert "Give another output_dir" in message and "set resume_with_changes: true to continue" in message
    assert not re.search(r"Using \d+ rows of", caplog.text)  # refused before the data (or model) loaded

    assert main([*base, *SAVE_EVERY_2, *new, f"--output_dir={out}", "--resume_with_changes=true"]) == 0
    assert main([*base, *SAVE_EVERY_2, *new, f"--output_dir={fresh}"]) == 0
    rates, fresh_rates = logged_rates(out), logged_rates(fresh)
    assert [rates[1], rates[2]] == [first[1], first[2]]
    assert [rates[3], rates[4]] == [fresh_rates[3], fresh_rates[4]] and fresh_rates[4] > 0

    assert main([*base, *new, f"--output_dir={switched}"], [FirstRates({1: first[1], 2: first[2]})]) == 0
    assert [logged_rates(switched)[3], logged_rates(switched)[4]] == [rates[3], rates[4]]
    assert_same_weights(switched, out)

    history = [json.loads(line) for line in (out / HISTORY_FILE).read_text().splitlines()]
    assert [entry["step"] for entry in history] == [0, 2]
    assert history[1]["changes"] == {"max_steps": [2, 4], "learning_rate": [0.003, 1e-05]}
    card = (out / "README.md").read_text()
    assert "## Settings changed during training" in card
    assert "from step 3 (resumed from `checkpoint-2`): `max_steps` 2 -> 4, `learning_rate` 0.003 -> 1e-05" in card
    assert read_record(out)["settings"]["learning_rate"] == 1e-05  # the record is what it trained to the end


def test_a_matching_relaunch_resumes_and_ends_as_an_uninterrupted_run(tmp_path, caplog):
    """Stopped at step 2 (SIGTERM) with save_strategy "no", the tiny config's: a checkpoint is saved anyway, and the
    same command resumes it to the uninterrupted run's weights and rates."""
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    command = [*SIMPO, "--max_steps=4", "--save_strategy=no"]
    assert simpo_main([*command, f"--output_dir={out}"], [SignalAt(2)]) == 128 + signal.SIGTERM
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert read_record(out / "checkpoint-2")["step"] == 2
    caplog.clear()
    assert simpo_main([*command, f"--output_dir={out}"]) == 0
    assert f"Resuming from the last complete checkpoint in output_dir: {out / 'checkpoint-2'}" in caplog.text
    assert simpo_main([*command, f"--output_dir={fresh}"]) == 0
    assert logged_rates(out) == logged_rates(fresh)
    assert_same_weights(fresh, out)


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_rewritten_data_is_refused_and_the_original_data_resumes_exactly(tmp_path, capsys, caplog, monkeypatch):
    data, out, fresh = tmp_path / "data", tmp_path / "run", tmp_path / "fresh"
    shutil.copytree(TINY_DATA, data)
    command = [*SIMPO, *SAVE_EVERY_2, "--max_steps=4", f"--dataset_mixer={json.dumps({str(data): 1.0})}"]
    assert simpo_main([*command, f"--output_dir={out}"], [SignalAt(2)]) == 128 + signal.SIGTERM
    original = (data / "train.jsonl").read_text()
    rows = [json.loads(line) for line in original.splitlines()]
    for row in rows:  # other pairs: each preference reversed
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    (data / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    caplog.clear()
    with monkeypatch.context() as patched:
        patched.setattr("simpo.train.recipe.get_tokenizer", no_model)  # refused once the data is read, before this
        message = refused(capsys, cli(simpo_main), [*command, f"--output_dir={out}"], "was trained with other data")
    assert message.startswith(f"{out / 'checkpoint-2'} (step 2) was trained with other data than this launch's")
    assert "train data (the fingerprint of its rows as read): '" in message
    assert "Using 600 rows of" in caplog.text
    assert not (out / "model.safetensors").exists()

    (data / "train.jsonl").write_text(original)  # copied back: another mtime, the same rows
    assert simpo_main([*command, f"--output_dir={out}"]) == 0
    assert simpo_main([*command, f"--output_dir={fresh}"]) == 0
    assert logged_rates(out) == logged_rates(fresh)
    assert_same_weights(fresh, out)


def test_the_rewritten_data_trains_from_the_resumed_step_with_resume_with_changes(tmp_path):
    data, out, kept = tmp_path / "data", tmp_path / "run", tmp_path / "kept"
    shutil.copytree(TINY_DATA, data)
    command = [*SIMPO, *SAVE_EVERY_2, "--max_steps=4", f"--dataset_mixer={json.dumps({str(data): 1.0})}"]
    assert simpo_main([*command, f"--output_dir={out}"], [SignalAt(2)]) == 128 + signal.SIGTERM
    shutil.copytree(out, kept)
    assert simpo_main([*command, f"--output_dir={kept}"]) == 0  # resumed on the old rows
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    (data / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert simpo_main([*command, f"--output_dir={out}", "--resume_with_changes=true"]) == 0
    assert logged_rates(out) == logged_rates(kept)  # the same schedule ...
    old_state = json.loads((kept / "trainer_state.json").read_text())["log_history"]
    new_state = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["loss"] for h in old_state if h.get("step") in (1, 2) and "loss" in h] == [
        h["loss"] for h in new_state if h.get("step") in (1, 2) and "loss" in h
    ]
    # ... and from step 3 the reversed pairs: their margins have the other sign of the old rows' at the same step.
    old_margin = next(h["rewards/margins"] for h in old_state if h.get("step") == 3)
    new_margin = next(h["rewards/margins"] for h in new_state if h.get("step") == 3)
    assert new_margin == pytest.approx(-old_margin, rel=1e-4)
    history = json.loads((out / HISTORY_FILE).read_text().splitlines()[-1])
    assert list(history["changes"]) == ["train data (the fingerprint of its rows as read)"]


@pytest.fixture
def other_shape(tmp_path):
    """The tiny Llama with a narrower MLP: a model of another shape."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(TINY_MODEL)
    config.intermediate_size //= 2
    path = tmp_path / "narrow-llama"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(TINY_MODEL).save_pretrained(path)
    return path


def test_another_model_is_refused_before_anything_loads_even_with_resume_with_changes(
    tmp_path, capsys, caplog, other_shape
):
    """Of the same shape (a copy: the checkpoint's weights would silently replace it) or another (a load_state_dict
    traceback after data and model loaded): refused either way, before the data loads."""
    out, copy = tmp_path / "run", tmp_path / "copied-llama"
    shutil.copytree(TINY_MODEL, copy)
    command = [*SIMPO, *SAVE_EVERY_2, "--max_steps=4", f"--output_dir={out}"]
    assert simpo_main(command, [SignalAt(2)]) == 128 + signal.SIGTERM
    for model in (copy, other_shape):
        for extra in ([], ["--resume_with_changes=true"]):
            caplog.clear()
            message = refused(
                capsys, cli(simpo_main), [*command, f"--model_name_or_path={model}", *extra], "cannot continue"
            )
            assert f"model_name_or_path: 'assets/tiny-llama' -> '{model}'" in message
            assert "Give another output_dir" in message
            assert "Using 600 rows" not in caplog.text
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2


def test_a_finished_run_without_checkpoints_is_kept_and_more_steps_are_refused(tmp_path, capsys, caplog):
    """save_strategy: "no" (the tiny config's): the same command again trains nothing and keeps the outputs; more
    steps cannot continue it (no checkpoint) and are refused instead of retraining from step 0 over it."""
    out = tmp_path / "run"
    command = [*SIMPO, f"--output_dir={out}"]
    assert simpo_main([*command, "--max_steps=4"]) == 0
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    caplog.clear()
    assert simpo_main([*command, "--max_steps=4"]) == 0
    assert f"Nothing left to train: {out} holds this run, finished at step 4" in caplog.text
    assert "SimPOTrainer" not in caplog.text  # decided before the model loaded
    for extra in ([], ["--resume_with_changes=true"]):
        message = refused(capsys, cli(simpo_main), [*command, "--max_steps=6", *extra], "^The finished run in")
        assert "max_steps: 4 -> 6" in message and 'It saved no checkpoint (save_strategy: "no")' in message
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name in kept} == kept


def test_a_finished_run_asked_for_more_steps_trains_on_with_the_new_schedule(tmp_path, capsys, caplog):
    out, fresh, switched = tmp_path / "run", tmp_path / "fresh", tmp_path / "switched"
    command = [*SIMPO, *SAVE_EVERY_2, f"--output_dir={out}"]
    assert simpo_main([*command, "--max_steps=4"]) == 0
    first = logged_rates(out)
    message = refused(capsys, cli(simpo_main), [*command, "--max_steps=6"], "^The finished run in")
    assert f"continue {out / 'checkpoint-4'} from step 4 with them: they apply from step 5 on" in message
    assert "(the final model, results and card are rewritten at the end)" in message
    caplog.clear()
    assert simpo_main([*command, "--max_steps=6", "--resume_with_changes=true"]) == 0
    assert "the run had finished at step 4: it trains on to the new settings' last step" in caplog.text
    assert simpo_main([*SIMPO, *SAVE_EVERY_2, "--max_steps=6", f"--output_dir={fresh}"]) == 0
    rates = logged_rates(out)
    assert [rates[5], rates[6]] == [logged_rates(fresh)[5], logged_rates(fresh)[6]]
    before = {step: rate for step, rate in first.items() if step <= 4}
    assert simpo_main([*SIMPO, "--max_steps=6", f"--output_dir={switched}"], [FirstRates(before)]) == 0
    assert [logged_rates(switched)[5], logged_rates(switched)[6]] == [rates[5], rates[6]]
    assert_same_weights(switched, out)
    assert read_record(out)["step"] == 6


def test_a_relaunch_that_changes_only_free_keys_resumes_silently(tmp_path, caplog):
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    base = [arg for arg in SIMPO if not arg.startswith(("--logging_steps", "--report_to"))]
    command = [*base, "--save_strategy=steps", "--max_steps=4"]
    first = ["--logging_steps=1", "--save_steps=2", "--report_to=none"]
    assert simpo_main([*command, *first, f"--output_dir={out}"], [SignalAt(2)]) == 128 + signal.SIGTERM
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        free = ["--logging_steps=2", "--save_steps=3", "--report_to=tensorboard", "--run_name=again"]
        assert simpo_main([*command, f"--output_dir={out}", *free]) == 0
    assert "trained with other settings" not in caplog.text
    assert simpo_main([*command, *first, f"--output_dir={fresh}"]) == 0
    assert_same_weights(fresh, out)


def test_every_trajectory_key_is_compared_and_only_free_keys_are_not():
    """The keys of both training configs, split: a key that could change what is trained is never free."""
    from simpo.run.relaunch import FREE_KEYS, is_free, trajectory_settings

    values = {key: 1 for key in ("learning_rate", "beta", "gamma_beta_ratio", "seed", "max_length", "chat_template")}
    values.update({key: 1 for key in ("logging_steps", "save_steps", "eval_steps", "report_to", "output_dir")})
    settings = trajectory_settings(values, "simpo-train")
    assert set(settings) == {
        "recipe",
        "learning_rate",
        "beta",
        "gamma_beta_ratio",
        "seed",
        "max_length",
        "chat_template",
    }
    for key in ("learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_steps", "beta", "loss_type"):
        assert not is_free(key), key
    assert "dataloader_drop_last" not in FREE_KEYS and not is_free("dataloader_drop_last")


def test_a_checkpoint_folder_that_is_not_resumed_is_named(tmp_path, caplog):
    from types import SimpleNamespace

    from simpo.run.resume import checkpoint_to_resume

    (tmp_path / "checkpoint-final").mkdir()
    caplog.set_level(logging.WARNING)
    assert checkpoint_to_resume(SimpleNamespace(resume_from_checkpoint=None, output_dir=str(tmp_path))) is None
    assert (
        f"{tmp_path / 'checkpoint-final'} is not resumed: a relaunch resumes only folders named checkpoint-<step>"
        in (caplog.text)
    )


def test_resume_from_checkpoint_true_and_paths_are_checked_before_anything_loads(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    command = [*SIMPO, *SAVE_EVERY_2, "--max_steps=4", f"--output_dir={out}"]
    caplog.clear()
    refused(
        capsys,
        cli(simpo_main),
        [*command, "--resume_from_checkpoint=true"],
        rf"^resume_from_checkpoint: true resumes the newest complete checkpoint in output_dir, but {out} holds none",
    )
    refused(
        capsys,
        cli(simpo_main),
        [*command, f"--resume_from_checkpoint={tmp_path / 'nowhere'}"],
        rf"^resume_from_checkpoint={tmp_path / 'nowhere'} is not a folder: give a checkpoint folder",
    )
    assert "Using 600 rows" not in caplog.text
    assert simpo_main(command, [SignalAt(2)]) == 128 + signal.SIGTERM
    caplog.clear()
    assert simpo_main([*command, "--resume_from_checkpoint=true"]) == 0
    assert f"resume_from_checkpoint: true: resuming from {out / 'checkpoint-2'}" in caplog.text
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert read_record(out) is not None and (out / RECORD_FILE).exists()
