"""Interruption of an SFT run: SIGTERM checkpoints and exits, and the relaunched command resumes from the last
complete checkpoint and ends exactly where an uninterrupted run ends (simpo/run/resume.py, as for SimPO)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file
from tiny_runs import SFT

from simpo.run.checkpoints import last_complete_checkpoint

RUN = [
    sys.executable,
    os.path.join(REPO, "scripts", "run_sft.py"),
    *SFT,
    "--max_steps=16",
    "--save_strategy=steps",
    "--save_steps=1000",
    "--per_device_train_batch_size=8",
]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def final_step(output_dir):
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    # Timings differ, and TRL's num_tokens counts from the launch (num_input_tokens_seen, in the state, does not).
    return {
        k: v
        for k, v in [h for h in history if "loss" in h][-1].items()
        if "per_second" not in k and k not in ("train_runtime", "num_tokens")
    }


@pytest.mark.slow
def test_sigterm_checkpoints_then_the_relaunch_resumes_and_matches_an_uninterrupted_run(tmp_path):
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    with open(tmp_path / "reference.log", "w") as log:
        assert (
            subprocess.run(
                RUN + [f"--output_dir={reference}"],
                cwd=REPO,
                env=ENV,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=600,
            ).returncode
            == 0
        )

    log_path = tmp_path / "stopped.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            RUN + [f"--output_dir={stopped}"], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT
        )
        while "'loss'" not in log_path.read_text():  # training has started; no scheduled save before step 1000
            assert proc.poll() is None, log_path.read_text()[-2000:]
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    output = log_path.read_text()
    assert code == 128 + signal.SIGTERM, output[-2000:]
    assert "Received SIGTERM: stopping after this step." in output
    checkpoint = last_complete_checkpoint(str(stopped))
    stopped_at = json.loads(open(os.path.join(checkpoint, "trainer_state.json")).read())["global_step"]
    assert checkpoint.endswith(f"checkpoint-{stopped_at}") and 1 <= stopped_at < 16
    assert not (stopped / "model.safetensors").exists()  # no final save after a stop

    with open(tmp_path / "resumed.log", "w") as log:
        assert (
            subprocess.run(
                RUN + [f"--output_dir={stopped}"], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, timeout=600
            ).returncode
            == 0
        )
    assert (
        f"Resuming from the last complete checkpoint in output_dir: {checkpoint}"
        in (tmp_path / "resumed.log").read_text()
    )
    assert final_step(stopped) == final_step(reference) and final_step(stopped)["step"] == 16
    expected, got = load_file(reference / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-7)
