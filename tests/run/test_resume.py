"""Interruption: a killed run resumes from its last complete checkpoint and ends exactly where an uninterrupted run
ends; SIGTERM checkpoints before exiting."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file
from tiny_runs import SIMPO

from simpo.run.checkpoints import checkpoint_problem, last_complete_checkpoint

RUN = [
    sys.executable,
    os.path.join(REPO, "scripts", "run_simpo.py"),
    *SIMPO,
    "--max_steps=12",
    "--save_strategy=steps",
    "--per_device_train_batch_size=8",
]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def launch(output_dir, log):
    return subprocess.Popen(
        RUN + [f"--output_dir={output_dir}", "--save_steps=3"], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT
    )


def wait_for_checkpoint(output_dir, proc, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        if last_complete_checkpoint(str(output_dir)) is not None:
            return
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        time.sleep(0.05)
    raise TimeoutError


def final_loss(output_dir):
    """The last logged training step, without its timing."""
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {k: v for k, v in [h for h in history if "loss" in h][-1].items() if "per_second" not in k}


@pytest.mark.slow
def test_sigkill_then_relaunch_resumes_and_matches_an_uninterrupted_run(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    with open(tmp_path / "reference.log", "w") as log:
        assert launch(reference, log).wait(timeout=600) == 0

    with open(tmp_path / "killed.log", "w") as log:
        proc = launch(killed, log)
        wait_for_checkpoint(killed, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resume_from = last_complete_checkpoint(str(killed))
    assert resume_from is not None and not (killed / "model.safetensors").exists()
    # A checkpoint killed while being written: weights, but no trainer_state.json yet.
    half_written = killed / "checkpoint-11"
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"partial")

    with open(tmp_path / "resumed.log", "w") as log:
        assert launch(killed, log).wait(timeout=600) == 0
    output = (tmp_path / "resumed.log").read_text()
    assert f"Skipping incomplete checkpoint {half_written}" in output
    assert f"Resuming from the last complete checkpoint in output_dir: {resume_from}" in output

    assert final_loss(killed) == final_loss(reference)
    assert final_loss(killed)["step"] == 12
    expected, got = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-7)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    out, log_path = tmp_path / "run", tmp_path / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            RUN + [f"--output_dir={out}", "--save_steps=1000"], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT
        )
        while "'loss'" not in log_path.read_text():  # training has started; no scheduled save before step 1000
            assert proc.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    output = log_path.read_text()
    assert code == 128 + signal.SIGTERM, output[-2000:]
    assert "Received SIGTERM: stopping after this step." in output
    assert "relaunch the same command to resume" in output
    checkpoint = last_complete_checkpoint(str(out))
    stopped_at = json.loads(open(os.path.join(checkpoint, "trainer_state.json")).read())["global_step"]
    assert checkpoint.endswith(f"checkpoint-{stopped_at}") and 1 <= stopped_at < 12
    assert not (out / "model.safetensors").exists()  # no final save after a stop


def test_signal_handlers_are_held_through_the_final_save_and_given_back_after():
    """A process that trains several times (a sweep, the GPU check's modes) must still be stoppable between runs; a
    signal during the final save must not kill it half-written."""
    from simpo.run.signals import STOP_SIGNALS, StopOnSignal

    def previous(signum, frame):
        pass

    old = signal.signal(signal.SIGTERM, previous)
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}  # SIGINT is SIG_IGN when the suite runs in the back
    try:
        stop = StopOnSignal()
        stop.on_train_begin(None, None, None)
        assert set(STOP_SIGNALS) == {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP}
        assert all(signal.getsignal(sig) == stop._request_stop for sig in STOP_SIGNALS)
        stop.on_train_end(None, None, None)
        assert all(signal.getsignal(sig) == stop._request_stop for sig in STOP_SIGNALS)  # the final save is next
        stop.give_back()
        assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_repeated_stop_signal_is_the_same_request_and_a_second_ctrl_c_stops_at_once():
    """SLURM and torchrun's agent may both deliver the signal: a second SIGTERM must not abort the checkpoint."""
    from simpo.run.signals import StopOnSignal

    stop = StopOnSignal()
    stop.training = True
    stop._request_stop(signal.SIGTERM, None)
    stop._request_stop(signal.SIGTERM, None)
    stop._request_stop(signal.SIGUSR1, None)
    assert stop.signum == signal.SIGTERM and stop.while_training
    with pytest.raises(KeyboardInterrupt):
        stop._request_stop(signal.SIGINT, None)


def test_relaunching_a_finished_run_keeps_its_results_and_more_steps_resume_with_changes(tmp_path, caplog, capsys):
    from simpo.train.recipe import train_main

    out = tmp_path / "run"
    base = [arg for arg in RUN[2:] if not arg.startswith("--max_steps")]
    args = [*base, f"--output_dir={out}", "--save_steps=2"]
    assert train_main([*args, "--max_steps=4"]) == 0
    results = (out / "train_results.json").read_text()
    state = (out / "trainer_state.json").read_text()
    assert train_main([*args, "--max_steps=4"]) == 0  # the same command again: nothing to train or overwrite
    assert f"Nothing left to train: {out} holds this run, finished at step 4" in caplog.text
    assert (out / "train_results.json").read_text() == results and (out / "trainer_state.json").read_text() == state
    with pytest.raises(ValueError, match=r"max_steps: 4 -> 6\. .* set resume_with_changes: true"):
        train_main([*args, "--max_steps=6"])
    capsys.readouterr()
    assert train_main([*args, "--max_steps=6", "--resume_with_changes=true"]) == 0  # resumes from step 4
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6
    assert "Resuming from the last complete checkpoint" in caplog.text
    assert re.search(r"time +[\d.]+ s for 2 steps \(resumed at step 4\)", capsys.readouterr().out)


def test_do_train_false_evaluates_the_model_as_loaded(tmp_path):
    from simpo.train.recipe import train_main

    out = tmp_path / "eval"
    assert train_main([*RUN[2:], f"--output_dir={out}", "--do_train=false"]) == 0
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_samples"] == 100 and 0 <= metrics["eval_rewards/accuracies"] <= 1
    assert not (out / "model.safetensors").exists() and not (out / "train_results.json").exists()


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A 4-step run's checkpoint-2 and checkpoint-4 (its final outputs removed: the run looks killed after step 4's
    checkpoint, so a relaunch resumes rather than finding a finished run)."""
    from simpo.train.recipe import train_main

    out = tmp_path_factory.mktemp("checkpoints") / "run"
    base = [arg for arg in RUN[2:] if not arg.startswith("--max_steps")]
    assert train_main([*base, f"--output_dir={out}", "--save_steps=2", "--max_steps=4"]) == 0
    return out, [*base, "--save_steps=2", "--max_steps=4"]


def copy_checkpoints(source, target):
    target.mkdir()
    for name in ("checkpoint-2", "checkpoint-4"):
        shutil.copytree(source / name, target / name)


@pytest.mark.parametrize("cut", ["model.safetensors", "optimizer.pt"])
def test_a_cut_last_checkpoint_is_skipped_and_the_relaunch_resumes_from_the_one_before(
    two_checkpoints, tmp_path, caplog, cut
):
    from simpo.train.recipe import train_main

    source, args = two_checkpoints
    out = tmp_path / "run"
    copy_checkpoints(source, out)
    path = out / "checkpoint-4" / cut
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy or a write that stopped halfway
    assert train_main([*args, f"--output_dir={out}"]) == 0
    assert f"Skipping incomplete checkpoint {out / 'checkpoint-4'}: {cut} is cut short" in caplog.text
    assert f"Resuming from the last complete checkpoint in output_dir: {out / 'checkpoint-2'}" in caplog.text
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-4")  # rewritten whole by the relaunch


def test_every_file_the_trainer_reads_is_verified(two_checkpoints, tmp_path):
    source, _ = two_checkpoints
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(source / "checkpoint-2", checkpoint)
    assert checkpoint_problem(str(checkpoint)) is None
    for name in ("scheduler.pt", "rng_state.pth", "optimizer.pt", "model.safetensors", "trainer_state.json"):
        path = checkpoint / name
        whole = path.read_bytes()
        for cut in (whole[:-3], whole[: len(whole) // 2], b""):
            path.write_bytes(cut)
            problem = checkpoint_problem(str(checkpoint))
            assert problem is not None and (name in problem or "trainer_state.json" in problem), (name, len(cut))
        path.write_bytes(whole)
    header = (checkpoint / "model.safetensors").read_bytes()
    (checkpoint / "model.safetensors").write_bytes(header[:8] + b"{not json" + header[17:])
    assert checkpoint_problem(str(checkpoint)) == "model.safetensors has an unreadable header"


def test_an_explicit_resume_from_a_cut_checkpoint_is_refused_with_the_reason(two_checkpoints, tmp_path):
    from simpo.train.recipe import train_main

    source, args = two_checkpoints
    out = tmp_path / "run"
    copy_checkpoints(source, out)
    (out / "checkpoint-2" / "scheduler.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(
        ValueError,
        match=rf"resume_from_checkpoint={out / 'checkpoint-2'} cannot be resumed from:"
        r" scheduler.pt is cut short",
    ):
        train_main([*args, f"--output_dir={out}", f"--resume_from_checkpoint={out / 'checkpoint-2'}"])


def test_a_full_disk_while_saving_says_so_where_and_which_checkpoint_is_intact(two_checkpoints, tmp_path, monkeypatch):
    """torch.save on a full disk raises "basic_ios::clear: iostream error" from its C++ stream: the user reads that
    the disk is full, where, and what a relaunch resumes from."""
    from simpo.errors import DiskFullError
    from simpo.train.recipe import train_main

    _, args = two_checkpoints
    out = tmp_path / "run"
    real_save = torch.save

    def full_from_step_4(obj, f, *rest, **kwargs):
        if "checkpoint-4" in str(f):
            raise RuntimeError("basic_ios::clear: iostream error")
        return real_save(obj, f, *rest, **kwargs)

    monkeypatch.setattr(torch, "save", full_from_step_4)
    with pytest.raises(DiskFullError) as raised:
        train_main([*args, f"--output_dir={out}"])
    message = str(raised.value)
    assert message.startswith(
        f"The disk is full: writing {out / 'checkpoint-4'} failed (RuntimeError: basic_ios::clear: iostream error; "
    )
    assert f"GiB free now on the disk holding {out})" in message
    assert f"{out / 'checkpoint-2'}, the last complete checkpoint, is intact" in message
    assert f"{out / 'checkpoint-4'} is incomplete: a relaunch skips it" in message
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")


def test_a_full_disk_names_errno_enospc_too():
    import errno

    from simpo.run.disk import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"))
    assert not is_disk_full(RuntimeError("CUDA out of memory"))
