"""One live run per output folder: a second launch is refused before it writes anything, naming the process that
holds the folder; a killed run's lock never blocks the relaunch."""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import REPO
from refusals import refused

from simpo.errors import FolderInUseError
from simpo.run.folder_lock import LOCK_FILE, lock_folder, unlock_folder

HOLD = (
    "import sys, time; from simpo.run.folder_lock import lock_folder; lock_folder(sys.argv[1], 'x');"
    " print('held', flush=True); time.sleep(600)"
)


def hold(folder, *args):
    """Another process that holds `folder` (as a live run does) until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_training_launch_is_refused_and_writes_nothing_until_the_first_is_killed(tmp_path, monkeypatch):
    from simpo.train.recipe import train_main

    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    out.mkdir()
    (out / "run_config.yaml").write_text("learning_rate: 1.0e-3\n")  # the live run's settings
    other = hold(out)
    try:
        with pytest.raises(FolderInUseError) as raised:
            train_main(
                [
                    "training_configs/tiny-simpo-cpu.yaml",
                    "--report_to=none",
                    f"--output_dir={out}",
                    "--learning_rate=5e-2",
                    "--max_steps=1",
                ]
            )
        assert f"{out} is in use by a run that is still going (pid {other.pid} on " in str(raised.value)
        assert f"-c {HOLD} {out})" in str(raised.value)  # the other process's command
        assert (out / "run_config.yaml").read_text() == "learning_rate: 1.0e-3\n"
        assert sorted(os.listdir(out)) == sorted(["run_config.yaml", LOCK_FILE])
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    lock_folder(str(out), "simpo-train")  # the killed run's lock went with its process
    unlock_folder(str(out))


@pytest.mark.parametrize("command", ["generate", "annotate", "binarise"])
def test_the_pipeline_commands_refuse_a_folder_in_use(tmp_path, capsys, command):
    import importlib

    out = tmp_path / "pipeline"
    out.mkdir()
    other = hold(out)
    try:
        main = importlib.import_module(f"simpo.pipeline.{command}").main
        refused(
            capsys,
            main,
            [os.path.join(REPO, "onpolicy_configs", "tiny-cpu.yaml"), f"--output_dir={out}"],
            f"in use by a run that is still going \\(pid {other.pid} on .* or give simpo-{command} another folder",
        )
        assert sorted(os.listdir(out)) == [LOCK_FILE]
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_simpo_answer_refuses_a_benchmark_folder_in_use(tmp_path, capsys):
    from simpo.evaluation.answer import main

    run = tmp_path / "model"
    run.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        (run / name).write_text("{}")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["hi"]}\n')
    other = hold(run / "eval" / "mt_bench")
    try:
        refused(
            capsys,
            main,
            [str(run), "--benchmark=mt_bench", f"--questions={questions}"],
            "or give simpo-answer another folder",
        )
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_the_same_process_may_lock_again_and_unlock_lets_others_in(tmp_path):
    lock_folder(str(tmp_path), "a")
    lock_folder(str(tmp_path), "a")
    unlock_folder(str(tmp_path))
    other = hold(tmp_path)
    other.send_signal(signal.SIGKILL)
    other.wait()


def test_the_recorded_command_masks_tokens(tmp_path):
    other = hold(tmp_path, "--hub_token=hf_one", "--hub_token", "hf_two", "--hf_token", "hf_three", "--seed", "1")
    try:
        recorded = (tmp_path / LOCK_FILE).read_text()
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert not any(secret in recorded for secret in ("hf_one", "hf_two", "hf_three"))
    assert recorded.endswith(f" {tmp_path} --hub_token=<TOKEN> --hub_token <TOKEN> --hf_token <TOKEN> --seed 1\n")


def test_push_to_hub_leaves_the_lock_file_out(tmp_path, monkeypatch):
    """The Trainer's own push_to_hub, its upload replaced by a record of what it was asked: the folder and the
    ignore patterns, applied as huggingface_hub applies them."""
    import transformers.trainer
    from conftest import TINY_MODEL
    from huggingface_hub.utils import filter_repo_objects
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    uploads = []
    monkeypatch.setattr(
        transformers.trainer, "hf_api", lambda: SimpleNamespace(upload_folder=lambda **asked: uploads.append(asked))
    )
    lock_folder(str(tmp_path), "simpo-train")
    try:
        trainer = Trainer(
            model=AutoModelForCausalLM.from_pretrained(TINY_MODEL),
            args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
        )
        trainer.hub_model_id = "me/tiny"  # as if its repository had been made
        trainer.push_to_hub()
    finally:
        unlock_folder(str(tmp_path))
    [asked] = uploads
    files = [
        os.path.relpath(os.path.join(root, name), asked["folder_path"])
        for root, _, names in os.walk(asked["folder_path"])
        for name in names
    ]
    uploaded = set(filter_repo_objects(files, ignore_patterns=asked["ignore_patterns"]))
    assert LOCK_FILE in files and "model.safetensors" in uploaded and LOCK_FILE not in uploaded
