"""CPU runs are bit-identical run to run: every command starts by turning on Intel MKL's conditional numerical
reproducibility (MKL_CBWR, simpo/environment.py), without which MKL may take a different code path in each process;
importing simpo alone changes no environment variable."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

# A command as every one of simpo's is wrapped (simpo/run/commands.py), doing one GEMM after torch was imported.
COMMAND = (
    "import torch; from simpo.run.commands import report_input_errors\n"
    "@report_input_errors('probe')\n"
    "def main():\n"
    "    torch.randn(8, 8) @ torch.randn(8, 8)\n"
    "main()"
)
IMPORT_ONLY = "import os, simpo, simpo.train.recipe; print('MKL_CBWR' in os.environ)"


def run(code: str, env: dict) -> str:
    env = {**{k: v for k, v in os.environ.items() if k != "MKL_CBWR"}, "PYTHONPATH": REPO, **env}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    ).stdout


def mkl_mode(env: dict) -> str:
    """The CNR mode MKL reports (MKL_VERBOSE) for the command's GEMM in a fresh process."""
    modes = [word for word in run(COMMAND, {"MKL_VERBOSE": "1", **env}).split() if word.startswith("CNR:")]
    if not modes:
        pytest.skip("torch is not built with MKL here")
    return modes[0]


@pytest.mark.slow
def test_a_command_makes_mkl_reproducible_even_after_torch_is_imported():
    assert mkl_mode({}) == "CNR:AUTO"  # what matters is before MKL's first call


@pytest.mark.slow
def test_a_mode_the_user_chose_is_kept():
    assert mkl_mode({"MKL_CBWR": "COMPATIBLE"}) == "CNR:COMPATIBLE"


@pytest.mark.slow
def test_importing_simpo_sets_no_environment_variable():
    assert run(IMPORT_ONLY, {}).strip() == "False"
