"""CPU runs are bit-identical run to run: importing simpo turns on Intel MKL's conditional numerical reproducibility
(MKL_CBWR), without which MKL may take a different code path in each process."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

GEMM = "import {first}, {second}; torch.randn(8, 8) @ torch.randn(8, 8)"


def mkl_mode(env: dict, first: str = "simpo", second: str = "torch") -> str:
    """The CNR mode MKL reports (MKL_VERBOSE) for a GEMM in a fresh process that imports first, then second."""
    env = {**{k: v for k, v in os.environ.items() if k != "MKL_CBWR"}, "MKL_VERBOSE": "1", "PYTHONPATH": REPO, **env}
    out = subprocess.run(
        [sys.executable, "-c", GEMM.format(first=first, second=second)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    modes = [word for word in out.split() if word.startswith("CNR:")]
    if not modes:
        pytest.skip("torch is not built with MKL here")
    return modes[0]


def test_importing_simpo_makes_mkl_reproducible_even_after_torch():
    assert mkl_mode({}) == "CNR:AUTO"
    assert mkl_mode({}, first="torch", second="simpo") == "CNR:AUTO"  # what matters is before MKL's first call


def test_a_mode_the_user_chose_is_kept():
    assert mkl_mode({"MKL_CBWR": "COMPATIBLE"}) == "CNR:COMPATIBLE"
