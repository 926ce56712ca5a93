"""DeepSpeed checkpoints cannot run code on resume (docs/bad-input-and-resume.md, Trust): DeepSpeed 0.19 loads its
files with torch.load(weights_only=False), which unpickles anything, so every checkpoint records the sha256 of each
of its files when it is saved (simpo/run/record.py) and a resume from one whose files changed is refused before
DeepSpeed (or its universal conversion) touches them. A real ZeRO-3 run on one CPU process (gloo) writes the
checkpoint."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from simpo.run.checkpoints import checkpoint_problem
from simpo.run.record import RECORD_FILE, checkpoint_digest_problem, read_record

pytestmark = pytest.mark.slow  # two accelerate launches of DeepSpeed (about 1-2 minutes each on 2 cores)

TIMEOUT_S = 900
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
STATES = "global_step2/zero_pp_rank_0_mp_rank_00_model_states.pt"


def zero3(out, *extra) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "accelerate_configs/deepspeed_zero3_cpu.yaml",
        "--num_processes",
        "1",
        "--main_process_port",
        "0",
        "scripts/run_simpo.py",
        "training_configs/tiny-simpo-cpu.yaml",
        "--report_to=none",
        "--do_eval=false",
        "--eval_strategy=no",
        "--eval_on_start=false",
        "--save_strategy=steps",
        "--save_steps=2",
        "--max_steps=2",
        f"--output_dir={out}",
        *extra,
    ]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def deepspeed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3") / "run"
    done = zero3(out)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return out


def test_every_file_of_a_deepspeed_checkpoint_is_recorded_and_checked(deepspeed_run, tmp_path):
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(deepspeed_run / "checkpoint-2", checkpoint)
    digests = read_record(checkpoint)["sha256"]
    assert STATES in digests and "global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt" in digests
    assert {"latest", "scheduler.pt", "trainer_state.json", "launch_layout.json"} <= set(digests)
    assert checkpoint_digest_problem(str(checkpoint)) is None

    states = checkpoint / STATES
    whole = states.read_bytes()
    states.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # one bit
    assert checkpoint_digest_problem(str(checkpoint)) == (
        f"{STATES} changed since it was saved (its sha256 is not the one recorded)"
    )
    states.write_bytes(whole)
    (checkpoint / "global_step2" / "extra.pt").write_bytes(b"")
    assert checkpoint_digest_problem(str(checkpoint)) == (
        "global_step2/extra.pt was not there when the checkpoint was saved"
    )
    (checkpoint / "global_step2" / "extra.pt").unlink()
    (checkpoint / "zero_to_fp32.py").unlink()
    assert checkpoint_digest_problem(str(checkpoint)) == "zero_to_fp32.py is missing"
    (checkpoint / RECORD_FILE).unlink()
    assert checkpoint_digest_problem(str(checkpoint)).startswith(f"it has no {RECORD_FILE} with the sha256 of its")
    # a relaunch skips it (as a checkpoint interrupted before its record) rather than resume it unchecked
    assert (
        checkpoint_problem(str(checkpoint))
        == f"no {RECORD_FILE} (the record of its files, written last: interrupted before it)"
    )


class Payload:
    """What a hostile checkpoint file holds: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_replaced_pickle_is_refused_before_deepspeed_loads_it(deepspeed_run, tmp_path):
    """Before: the relaunch resumed the checkpoint and DeepSpeed's load ran the command."""
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    shutil.copytree(deepspeed_run, out)
    for name in ("train_results.json", RECORD_FILE):  # the run looks killed after its checkpoint: it resumes
        (out / name).unlink()
    torch.save({"module": Payload(marker)}, out / "checkpoint-2" / STATES)
    done = zero3(out)
    assert done.returncode != 0 and "exitcode  : 2" in done.stderr, (done.stdout + done.stderr)[-5000:]  # the rank's
    assert not marker.exists()
    assert (
        f"simpo-train: error: Not resuming {out / 'checkpoint-2'}: {STATES} changed since it was saved (its sha256"
        " is not the one recorded). DeepSpeed loads a checkpoint's files with pickle" in done.stderr
    )
    assert "Using 600 rows" not in done.stdout + done.stderr  # before the data, the model or DeepSpeed's engine
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
