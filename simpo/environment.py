"""What simpo reads from the process environment, read one way: a yes/no variable (env_flag), the launcher's process
count and rank, and the numerics setting every run starts with (reproducible_numerics).

This module imports nothing of simpo, so that every layer reads the environment through it.
"""

import os

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def env_flag(name: str, default: bool = False) -> bool:
    """A yes/no environment variable: one of TRUE_WORDS (any case) is yes, unset is `default`, anything else no."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in TRUE_WORDS


def switched_off(value: str) -> bool:
    """Whether a setting that otherwise names something (a path, a kernel) is one of FALSE_WORDS."""
    return value.strip().lower() in FALSE_WORDS


def launched_processes() -> int:
    """The processes the launcher started (torchrun's WORLD_SIZE, which accelerate launch sets); 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank among them (RANK); 0 without a launcher."""
    return int(os.environ.get("RANK", "0"))


def reproducible_numerics() -> None:
    """Intel MKL (torch's CPU BLAS) may take a different code path run to run unless conditional numerical
    reproducibility is on, so two identical CPU runs (or a resumed one and its uninterrupted twin) could differ in the
    last bits. MKL reads MKL_CBWR once, at its first call: every command and run calls this first, before any
    computation. A value the user set (e.g. COMPATIBLE, or OFF for speed) is kept."""
    os.environ.setdefault("MKL_CBWR", "AUTO")
