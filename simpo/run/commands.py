"""How every command of the package starts and ends.

A command's main() is wrapped in report_input_errors: the process starts with reproducible numerics
(simpo/environment.py), and a SimpoError (simpo/errors.py: a config key, a data file or row, a chat template, a model
that cannot be found, a refused launch, a NaN step, a full disk, a folder in use) is printed as its message alone,
`<command>: error: ...` (one line per problem it names), and the process exits with status 2, as argparse does for a
bad command line. The traceback is for bug reports: set SIMPO_TRACEBACK=1 to get it. Any other exception is a bug (or
the environment's) and keeps its traceback. exit_process is how a command leaves once its recipe returned.
"""

import functools
import logging
import os
import sys

from simpo.environment import env_flag, launched_processes, launched_rank, reproducible_numerics
from simpo.errors import SimpoError

TRACEBACK_VARIABLE = "SIMPO_TRACEBACK"
USAGE_ERROR = 2  # argparse's status for a bad command line


def wants_traceback() -> bool:
    return env_flag(TRACEBACK_VARIABLE)


def error_lines(prog: str, error: SimpoError) -> str:
    """`prog: error: problem` for each problem the error names (on a distributed launch, with the process's rank),
    then the hint for the traceback."""
    where = f" [rank {launched_rank()}]" if launched_processes() > 1 else ""
    lines = [f"{prog}{where}: error: {problem}" for problem in error.problems or [str(error)]]
    return "\n".join(lines + [f"(set {TRACEBACK_VARIABLE}=1 for the traceback)"])


def report_input_errors(prog: str):
    """Decorate a command's main(): numerics made reproducible before anything runs, and a SimpoError it raises
    becomes `prog: error: message` on stderr and exit status 2 (on every process of a distributed launch)."""

    def decorate(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            reproducible_numerics()
            try:
                return main(*args, **kwargs)
            except SimpoError as error:
                if wants_traceback():
                    raise
                print(error_lines(prog, error), file=sys.stderr, flush=True)
                exit_process(USAGE_ERROR)

        return run

    return decorate


def exit_process(code: int) -> None:
    """Leave with `code` once a recipe has returned. A distributed run (WORLD_SIZE > 1) leaves without Python's
    interpreter teardown: a gloo or DeepSpeed worker thread still freeing a finished collective's tensors while the
    interpreter shuts down calls std::terminate (SIGABRT, "terminate called without an active exception"), and the
    launcher then reports a failure for a run that succeeded. By then everything is written and the process group
    destroyed; Python's buffers are flushed first."""
    if launched_processes() <= 1:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
