"""A pipeline stage run before the one it reads from, or on inputs that are not there, is refused in one line and
writes nothing: no output folder, no `_simpo.lock` left behind."""

import os
import re

import pytest
from refusals import refused

from simpo.pipeline import annotate, binarise, generate
from simpo.run.folder_lock import LOCK_FILE, unlock_folder

PIPELINE = "onpolicy_configs/tiny-cpu.yaml"


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


@pytest.mark.parametrize(
    "stage, folder, message",
    [
        (annotate, "generations", "No generations in {}: run simpo-generate with this config first."),
        (binarise, "annotations", "No annotations in {}: run simpo-annotate with this config first."),
    ],
    ids=["annotate", "binarise"],
)
def test_a_stage_before_its_previous_one_is_refused_and_writes_nothing(capsys, tmp_path, stage, folder, message):
    out = tmp_path / "onpolicy"
    expected = re.escape(message.format(out / folder))
    refused(capsys, stage.main, [PIPELINE, f"--output_dir={out}"], f"^{expected}$")
    assert not out.exists()
    out.mkdir()  # an output folder that exists (e.g. an earlier stage's, elsewhere in it): left as it was
    refused(capsys, stage.main, [PIPELINE, f"--output_dir={out}"], f"^{expected}$")
    assert os.listdir(out) == []
    (out / LOCK_FILE).write_text("pid 1 on elsewhere: a run that ended\n")  # a finished run's lock file: no new file
    refused(capsys, stage.main, [PIPELINE, f"--output_dir={out}"], f"^{expected}$")
    assert os.listdir(out) == [LOCK_FILE]
    unlock_folder(str(out))  # the refused command, run in this process, took the free lock to check it


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model_name_or_path={tmp}/no-model", "there is no folder"),
        ("--dataset_mixer={{{tmp}/no-prompts: 1.0}}", "is neither a local folder or file"),
    ],
    ids=["model", "prompts"],
)
def test_simpo_generate_on_missing_inputs_is_refused_and_writes_nothing(capsys, tmp_path, override, message):
    out = tmp_path / "onpolicy"
    refused(capsys, generate.main, [PIPELINE, f"--output_dir={out}", override.format(tmp=tmp_path)], message)
    assert not out.exists()
