"""Training numbers refused at parse time, naming the key, for both recipes (simpo/config/arguments.py
check_training_numbers), and SimPO's beta / gamma_beta_ratio bounds (simpo/train/config.py)."""

import pytest

from simpo.config.parser import parse_args
from simpo.errors import ConfigError
from simpo.sft.recipe import SFT_ARGUMENTS
from simpo.train.config import BETA_MAX, GAMMA_BETA_RATIO_MAX, SIMPO_ARGUMENTS

REFUSED = [
    ("--gradient_accumulation_steps=0", r"gradient_accumulation_steps must be at least 1 \(got 0\)"),
    ("--per_device_train_batch_size=0", r"per_device_train_batch_size must be at least 1 \(got 0\)"),
    ("--per_device_eval_batch_size=0", r"per_device_eval_batch_size must be at least 1 \(got 0\)"),
    ("--learning_rate=-1", r"learning_rate must be a finite number >= 0 \(got -1.0\)"),
    ("--learning_rate=nan", r"learning_rate must be a finite number >= 0 \(got nan\)"),
    ("--eval_steps=0", r"eval_steps must be positive \(got 0.0\).*Remove the key to evaluate every logging_steps"),
    ("--save_steps=0", r"save_steps must be positive \(got 0.0\)"),
]


@pytest.mark.parametrize("groups", [SIMPO_ARGUMENTS, SFT_ARGUMENTS], ids=["simpo", "sft"])
@pytest.mark.parametrize("arg,message", REFUSED)
def test_bad_training_numbers_are_refused_at_parse_time_naming_the_key(tmp_path, groups, arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_args([arg, f"--output_dir={tmp_path}", "--use_cpu=true"], groups)


@pytest.mark.parametrize("groups", [SIMPO_ARGUMENTS, SFT_ARGUMENTS], ids=["simpo", "sft"])
def test_a_launch_that_trains_nothing_is_refused_unless_it_only_evaluates(tmp_path, groups):
    args = ["--max_steps=0", "--num_train_epochs=0", f"--output_dir={tmp_path}", "--use_cpu=true"]
    with pytest.raises(ConfigError, match=r"max_steps=0 and num_train_epochs=0.0 train nothing"):
        parse_args(args, groups)
    assert parse_args([*args, "--do_train=false"], groups)[2].do_train is False
    assert parse_args(["--max_steps=0", f"--output_dir={tmp_path}", "--use_cpu=true"], groups)[2].num_train_epochs == 3


def test_eval_steps_given_is_kept_and_fractions_still_work(tmp_path):
    base = [f"--output_dir={tmp_path}", "--use_cpu=true", "--eval_strategy=steps", "--logging_steps=5"]
    assert parse_args([*base, "--eval_steps=7"], SIMPO_ARGUMENTS)[2].eval_steps == 7
    assert parse_args([*base, "--eval_steps=0.25"], SIMPO_ARGUMENTS)[2].eval_steps == 0.25


@pytest.mark.parametrize(
    "arg,message",
    [
        ("--beta=1e300", r"beta=1e\+300 is above 1e\+06, where the loss stops measuring preference"),
        ("--beta=2e6", r"beta=2e\+06 is above 1e\+06"),
        ("--gamma_beta_ratio=1e30", r"gamma_beta_ratio=1e\+30 asks .* above 87.3 \(-ln of fp32's smallest normal"),
        ("--gamma_beta_ratio=-100", r"gamma_beta_ratio=-100 asks"),
    ],
)
def test_beta_and_gamma_are_bounded_where_the_loss_stops_meaning_anything(tmp_path, arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_args([arg, f"--output_dir={tmp_path}", "--use_cpu=true"], SIMPO_ARGUMENTS)


def test_the_bounds_follow_from_fp32():
    import torch

    # -ln(smallest normal fp32): a probability ratio below it is no normal fp32 number
    assert GAMMA_BETA_RATIO_MAX == pytest.approx(
        -torch.log(torch.tensor(torch.finfo(torch.float32).tiny, dtype=torch.float64)).item()
    )
    # beta times the rounding step of an fp32 average log-prob of size 10 is about 1 nat of margin at the bound
    rounding = torch.finfo(torch.float32).eps * 10 / 2
    assert 0.5 < BETA_MAX * rounding < 2
    # and the bounds leave the paper's ranges (beta 2.5 to 10, gamma_beta_ratio up to 1.6) well inside
    assert BETA_MAX > 10 and GAMMA_BETA_RATIO_MAX > 1.6


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot create files in. Mode bits do not bind root (the suite may run as root), so as
    root the check runs as `nobody` (seteuid, given back after) in a root-owned folder it may enter but not write."""
    import os
    import tempfile

    folder = tempfile.mkdtemp(prefix="simpo-unwritable-")
    os.chmod(folder, 0o555)
    try:
        if os.geteuid() == 0:
            os.seteuid(65534)
            try:
                yield folder
            finally:
                os.seteuid(0)
        else:
            yield folder
    finally:
        os.chmod(folder, 0o755)
        os.rmdir(folder)


@pytest.mark.parametrize("groups", [SIMPO_ARGUMENTS, SFT_ARGUMENTS], ids=["simpo", "sft"])
@pytest.mark.parametrize("case", ["file", "below a file", "not writable", "below a folder not writable"])
def test_an_output_dir_the_run_could_not_write_is_refused_when_the_config_is_read(tmp_path, request, groups, case):
    """Before: a traceback from Trainer.__init__, after the data and the model had loaded."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    if case == "file":
        output_dir, message = a_file, rf"^output_dir={a_file} is a file, not a folder"
    elif case == "below a file":
        output_dir, message = a_file / "run", rf"^output_dir={a_file / 'run'} is below {a_file}, which is a file"
    else:
        folder = request.getfixturevalue("unwritable")
        output_dir = f"{folder}/run/deeper" if case.startswith("below") else folder
        where = "it" if output_dir == folder else f"{folder}, the nearest folder on its way that exists,"
        message = rf"^output_dir={output_dir} cannot be written: {where} refuses new files \(Permission denied\)"
    with pytest.raises(ConfigError, match=message):
        parse_args([f"--output_dir={output_dir}", "--use_cpu=true"], groups)
