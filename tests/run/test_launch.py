"""A stale torch extension build lock (left by an interrupted DeepSpeed op build) is refused before DeepSpeed starts,
with the path to delete; a lock a live build holds is left alone."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO

from simpo.run.launch import check_build_locks, deepspeed_requested

# torch's FileBaton: the lock is created with O_CREAT | O_EXCL and held open while the build runs.
BUILD = (
    "import sys, time; from torch.utils.file_baton import FileBaton; b = FileBaton(sys.argv[1]);"
    " assert b.try_acquire(); print('building', flush=True); time.sleep(600)"
)


@pytest.fixture
def extensions(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # as `accelerate launch` with a DeepSpeed config sets it
    (tmp_path / "ext" / "deepspeed_shm_comm").mkdir(parents=True)
    return tmp_path / "ext" / "deepspeed_shm_comm" / "lock"


def test_a_lock_left_by_a_killed_build_is_refused_before_anything_runs(extensions, tmp_path, monkeypatch):
    from simpo.train.recipe import train_main

    build = subprocess.Popen([sys.executable, "-c", BUILD, str(extensions)], stdout=subprocess.PIPE, text=True)
    assert build.stdout.readline().strip() == "building"
    build.send_signal(signal.SIGKILL)  # an interrupted first launch
    build.wait()
    assert extensions.exists()
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    with pytest.raises(
        RuntimeError,
        match=rf"A build lock is left over .*: {extensions}\. No process holds it.*"
        rf"Delete it and launch again: rm {extensions}$",
    ):
        train_main(["training_configs/tiny-simpo-cpu.yaml", f"--output_dir={out}", "--report_to=none"])
    assert not out.exists()


def test_a_lock_a_live_build_holds_is_waited_on_as_before(extensions):
    build = subprocess.Popen([sys.executable, "-c", BUILD, str(extensions)], stdout=subprocess.PIPE, text=True)
    try:
        assert build.stdout.readline().strip() == "building"
        check_build_locks(["config.yaml"], settle_s=0)  # a build in progress: no refusal
    finally:
        build.send_signal(signal.SIGKILL)
        build.wait()
    with pytest.raises(RuntimeError, match="rm "):
        check_build_locks(["config.yaml"], settle_s=0)


def test_the_default_build_folder_and_launches_without_deepspeed(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    from torch.utils.cpp_extension import get_default_build_root

    lock = os.path.join(
        get_default_build_root(),
        f"py{sys.version_info.major}{sys.version_info.minor}_cpu",
        "deepspeed_shm_comm",
        "lock",
    )
    os.makedirs(os.path.dirname(lock))
    open(lock, "w").close()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    config = tmp_path / "run.yaml"
    config.write_text("model_name_or_path: x\n")
    check_build_locks([str(config)], settle_s=0)  # no DeepSpeed: its builds are not this launch's concern
    assert not deepspeed_requested([str(config)])
    config.write_text("model_name_or_path: x\ndeepspeed: ds.json\n")
    assert deepspeed_requested([str(config)]) and deepspeed_requested(["c.yaml", "--deepspeed=ds.json"])
    with pytest.raises(RuntimeError, match=f"rm {lock}"):
        check_build_locks([str(config)], settle_s=0)
