"""How the commands end on bad input (simpo/run/commands.py): the message alone on stderr and exit status 2, the
traceback only with SIMPO_TRACEBACK=1; no arguments prints usage; a refused launch writes nothing."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

from simpo.errors import ConfigError, DataError, SimpoError, all_error_classes
from simpo.run.commands import report_input_errors

SCRIPT = os.path.join(REPO, "scripts", "run_simpo.py")
TINY = os.path.join(REPO, "training_configs", "tiny-simpo-cpu.yaml")


def simpo_train(cwd, *args, **env):
    inherited = {k: v for k, v in os.environ.items() if k != "SIMPO_TRACEBACK"}
    environ = {**inherited, "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, SCRIPT, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_no_arguments_prints_usage_and_writes_nothing(tmp_path):
    done = simpo_train(tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: simpo-train CONFIG.yaml") and "simpo-train --help" in done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []  # no ./trainer_output/


@pytest.mark.slow
def test_a_refused_config_prints_the_message_alone_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    done = simpo_train(tmp_path, TINY, f"--output_dir={out}", "--gradient_accumulation_steps=0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "simpo-train: error: gradient_accumulation_steps must be at least 1 (got 0).",
        "(set SIMPO_TRACEBACK=1 for the traceback)",
    ]
    assert not out.exists()


@pytest.mark.slow
def test_refused_data_writes_no_output_dir_and_the_traceback_is_there_on_request(tmp_path):
    bad = tmp_path / "prefs.csv"
    bad.write_text("prompt,chosen,rejected\n")
    out = tmp_path / "run"
    args = (
        TINY,
        f"--output_dir={out}",
        f"--dataset_mixer={{{bad}: 1.0}}",
        "--dataset_splits=train",
        "--do_eval=false",
        "--eval_strategy=no",
        "--eval_on_start=false",
    )
    done = simpo_train(tmp_path, *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"simpo-train: error: {bad}: CSV is not a supported format" in done.stderr
    assert not out.exists()  # run_config.yaml is written only once the data and model have loaded

    traced = simpo_train(tmp_path, *args, SIMPO_TRACEBACK="1")
    assert traced.returncode == 1 and "Traceback" in traced.stderr and "DataError" in traced.stderr


def test_the_package_errors_share_one_base_and_stay_value_errors():
    for error in (ConfigError, DataError):
        assert issubclass(error, SimpoError) and issubclass(error, ValueError)
    from simpo.errors import ModelNotFound, TemplateError

    assert issubclass(TemplateError, SimpoError) and issubclass(ModelNotFound, FileNotFoundError)


def test_the_run_state_errors_print_as_their_message_and_keep_their_builtin_kind():
    """A NaN step, a full disk, a folder in use, a stale build lock, a failing reward function: the message says
    what happened and what to do, so a user sees it alone; code that catches the builtin kind still does."""
    from simpo.errors import DiskFullError, FolderInUseError, NonFiniteError, RewardFunctionError, StaleBuildLock

    for error, kind in (
        (NonFiniteError, FloatingPointError),
        (DiskFullError, OSError),
        (FolderInUseError, RuntimeError),
        (StaleBuildLock, RuntimeError),
        (RewardFunctionError, ValueError),
    ):
        assert issubclass(error, SimpoError) and issubclass(error, kind), error


@pytest.mark.slow
def test_a_run_stopped_by_a_nan_ends_with_its_message_alone(tmp_path):
    out = tmp_path / "run"
    done = simpo_train(
        REPO,
        TINY,
        f"--output_dir={out}",
        "--report_to=none",
        "--do_eval=false",
        "--eval_strategy=no",
        "--eval_on_start=false",
        "--max_steps=4",
        "--warmup_steps=0",
        "--save_strategy=steps",
        "--save_steps=1",
        "--learning_rate=1e30",
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "simpo-train: error: Non-finite gradient norm at step 2: stopped before its optimizer update" in done.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-1"]


def test_only_the_package_errors_lose_their_traceback(capsys, monkeypatch):
    monkeypatch.delenv("SIMPO_TRACEBACK", raising=False)

    @report_input_errors("simpo-x")
    def refuses():
        raise DataError("prefs [train] row 3: bad")

    @report_input_errors("simpo-x")
    def breaks():
        raise KeyError("a bug")

    with pytest.raises(SystemExit) as stop:
        refuses()
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("simpo-x: error: prefs [train] row 3: bad\n")
    with pytest.raises(KeyError):
        breaks()


def instance(cls):
    """An instance of an error class as the package raises it: one message."""
    return cls(f"{cls.__name__}: what went wrong, and the fix.")


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_is_one_line_with_exit_2(cls, capsys, monkeypatch):
    """Every kind of refusal the package makes prints as its message alone, `prog: error: ...`, one line (and the
    traceback hint), exit status 2; and stays the builtin error a library caller catches."""
    monkeypatch.delenv("SIMPO_TRACEBACK", raising=False)

    @report_input_errors("simpo-x")
    def main():
        raise instance(cls)

    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"simpo-x: error: {cls.__name__}: what went wrong, and the fix.",
        "(set SIMPO_TRACEBACK=1 for the traceback)",
    ]
    assert issubclass(cls, SimpoError)
    assert cls is SimpoError or any(base.__module__ == "builtins" and base is not Exception for base in cls.__mro__)


def test_the_walk_covers_every_error_the_package_defines():
    import simpo.errors

    defined = {
        value for value in vars(simpo.errors).values() if isinstance(value, type) and issubclass(value, Exception)
    }
    assert defined == set(all_error_classes())
    assert len(defined) >= 14


def test_several_problems_are_named_at_once_each_on_a_line_of_its_own(capsys, monkeypatch):
    monkeypatch.delenv("SIMPO_TRACEBACK", raising=False)

    @report_input_errors("simpo-x")
    def main():
        raise ConfigError("Unknown config key 'lr' (command line).", "beta must be positive (got -1.0).")

    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "simpo-x: error: Unknown config key 'lr' (command line).",
        "simpo-x: error: beta must be positive (got -1.0).",
        "(set SIMPO_TRACEBACK=1 for the traceback)",
    ]
