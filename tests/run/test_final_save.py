"""A run's end (simpo/run/steps.py save_final): the final model is written into a temporary folder and renamed into
output_dir, the run is finished only once its record (simpo/run/record.py) lists every file it wrote with its size,
and a relaunch whose final files do not verify rewrites them from the last checkpoint that does. Stop signals
(SIGTERM, SIGUSR1, SIGHUP) checkpoint whatever save_strategy says, and one during the final save lets it finish."""

import json
import os
import signal

import pytest
import torch
from tiny_runs import SAVE_EVERY_2, SIMPO, SignalAt, assert_same_weights, logged_rates, simpo_main

from simpo.run.record import final_files_problem, read_record

pytestmark = pytest.mark.slow  # each test trains the tiny model a few times


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 4-step run, saving every 2 steps."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert simpo_main([*SIMPO, *SAVE_EVERY_2, "--max_steps=4", f"--output_dir={out}"]) == 0
    return out


def command(out, *extra):
    return [*SIMPO, *SAVE_EVERY_2, "--max_steps=4", f"--output_dir={out}", *extra]


def test_the_record_lists_every_final_file_with_its_size(reference):
    record = read_record(reference)
    assert record["step"] == 4 and record["recipe"] == "simpo-train"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "train_results.json", "trainer_state.json"):
        assert record["files"][name] == os.path.getsize(reference / name), name
    assert final_files_problem(str(reference), record) is None
    assert not (reference / "_final_save.partial").exists()


@pytest.mark.parametrize("cut", ["truncated", "empty", "missing"])
def test_a_finished_run_whose_model_does_not_verify_is_rewritten_from_its_checkpoint(reference, tmp_path, caplog, cut):
    """Before: `Nothing left to train ... (kept)`, exit 0, and still no usable model."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    model = out / "model.safetensors"
    if cut == "missing":
        model.unlink()
    else:
        model.write_bytes(model.read_bytes()[: 1000 if cut == "truncated" else 0])
    caplog.clear()
    assert simpo_main(command(out)) == 0
    assert f"The final model in {out} does not verify (model.safetensors " in caplog.text
    assert f"rewriting it from {out / 'checkpoint-4'}, the last complete checkpoint" in caplog.text
    assert "Nothing left to train" not in caplog.text
    assert_same_weights(reference, out)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4  # no step past the end
    assert final_files_problem(str(out), read_record(out)) is None


def test_a_run_killed_between_the_renames_of_its_final_save_is_rewritten_on_relaunch(
    reference, tmp_path, monkeypatch, caplog
):
    """The process dies (here: an exception where a SIGKILL would land) after the first file of the final save was
    renamed into output_dir: no record, so the relaunch does not take it for finished."""
    out = tmp_path / "run"
    real_replace, renamed = os.replace, []

    def dies_after_one(source, target):
        if "_final_save.partial" in str(source) and renamed:
            raise SystemExit("killed")
        real_replace(source, target)
        renamed.append(target)

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", dies_after_one)
        with pytest.raises(SystemExit):
            simpo_main(command(out))
    assert read_record(out) is None and (out / "_final_save.partial").is_dir()
    caplog.clear()
    assert simpo_main(command(out)) == 0
    assert "holds the run's last step (4): nothing left to train; the final files are written from it" in caplog.text
    assert_same_weights(reference, out)
    assert not (out / "_final_save.partial").exists() and read_record(out)["step"] == 4


def test_a_sigterm_during_the_final_save_lets_it_finish_and_the_run_is_finished(reference, tmp_path, monkeypatch):
    """Before: the handlers were given back when training ended, so SIGTERM killed the process mid-save (a 0-byte
    model.safetensors), and the relaunch said `Nothing left to train` over it."""
    import simpo.run.steps

    out, handler = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    real = simpo.run.steps.save_config_for_generation

    def signalled(model, folder):  # between the model's save and its renames into output_dir
        os.kill(os.getpid(), signal.SIGTERM)
        real(model, folder)

    monkeypatch.setattr(simpo.run.steps, "save_config_for_generation", signalled)
    assert simpo_main(command(out)) == 128 + signal.SIGTERM
    assert final_files_problem(str(out), read_record(out)) is None
    assert_same_weights(reference, out)
    assert signal.getsignal(signal.SIGTERM) is handler  # given back once the run ended


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGHUP])
def test_sigusr1_and_sighup_checkpoint_and_stop_as_sigterm_does(tmp_path, caplog, signum):
    """SLURM's --signal=USR1@90, a closed terminal: before, the process died at once (rc -10 / -1) with no
    checkpoint. With save_strategy "no" (the tiny config's) the checkpoint is saved all the same, and the same command
    resumes it to the uninterrupted run's weights."""
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    run = [*SIMPO, "--max_steps=4", "--save_strategy=no"]
    assert simpo_main([*run, f"--output_dir={out}"], [SignalAt(3, signum)]) == 128 + signum
    assert f"Received {signal.Signals(signum).name}: stopping after this step." in caplog.text
    assert f"Stopped by signal {signum}; relaunch the same command to resume." in caplog.text
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (out / "model.safetensors").exists() and read_record(out) is None
    assert simpo_main([*run, f"--output_dir={out}"]) == 0
    assert simpo_main([*run, f"--output_dir={fresh}"]) == 0
    assert logged_rates(out) == logged_rates(fresh)
    assert_same_weights(fresh, out)


def test_no_file_the_run_writes_holds_the_hub_token(tmp_path):
    """training_args.bin (output_dir and every checkpoint) pickled the config with hub_token in plain text, and
    push_to_hub uploads the top-level one. The token stays in memory (the push reads it there)."""
    from simpo.train.recipe import train_main

    token = "hf_sEcReT0123456789abcdefTOKEN"
    out = tmp_path / "run"
    seen = {}

    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            seen["token"] = args.hub_token

    argv = [
        *[arg for arg in SIMPO if arg != "--report_to=none"],
        "--report_to=tensorboard",
        *SAVE_EVERY_2,
        "--max_steps=2",
        f"--output_dir={out}",
        f"--hub_token={token}",
    ]
    assert train_main(argv, [Probe()]) == 0
    assert seen["token"] == token
    written = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.name.startswith("events.out.tfevents") for path in written)
    holding = [str(path) for path in written if token.encode() in path.read_bytes()]
    assert holding == []
    for bin_file in (out / "training_args.bin", out / "checkpoint-2" / "training_args.bin"):
        args = torch.load(bin_file, weights_only=False)
        assert args.hub_token is None and args.learning_rate == 3e-3


def test_a_cut_final_model_is_retrained_from_an_earlier_checkpoint_to_the_same_weights(tmp_path, caplog):
    """The final model and the last step's checkpoint cut (a copy that stopped): the relaunch trains step 4 again
    from checkpoint-3 and ends bit for bit where the run did."""
    out = tmp_path / "run"
    run = [*SIMPO, "--save_strategy=steps", "--save_steps=3", "--max_steps=4", f"--output_dir={out}"]
    assert simpo_main(run) == 0
    finished = (out / "model.safetensors").read_bytes()
    for model in (out / "model.safetensors", out / "checkpoint-4" / "model.safetensors"):
        model.write_bytes(finished[: len(finished) // 2])
    caplog.clear()
    assert simpo_main(run) == 0
    assert f"rewriting it from {out / 'checkpoint-3'}, the last complete checkpoint" in caplog.text
    assert (out / "model.safetensors").read_bytes() == finished
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
