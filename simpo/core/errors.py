"""How the commands end on an error in their input or run state: a SimpoError (a config key, a data file or row, a chat
template, a model that cannot be found, a NaN step, a full disk, a folder in use; simpo/data/errors.py) is printed as
its message alone, `<command>: error: ...`, and the process exits with status 2, as argparse does for a bad command
line. The traceback is for bug reports: set SIMPO_TRACEBACK=1 to get it. Any other exception is a bug (or the
environment's) and keeps its traceback."""

import functools
import os
import sys

from simpo.core.launch_checks import exit_process
from simpo.data.errors import SimpoError

TRACEBACK_VARIABLE = "SIMPO_TRACEBACK"
USAGE_ERROR = 2  # argparse's status for a bad command line


def wants_traceback() -> bool:
    return os.environ.get(TRACEBACK_VARIABLE, "").lower() in ("1", "true", "yes")


def report_input_errors(prog: str):
    """Decorate a command's main(): a SimpoError it raises becomes `prog: error: message` on stderr and exit status
    2 (on every process of a distributed launch, each naming its rank)."""

    def decorate(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except SimpoError as error:
                if wants_traceback():
                    raise
                rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
                where = f" [rank {rank}]" if rank is not None else ""
                print(
                    f"{prog}{where}: error: {error}\n(set {TRACEBACK_VARIABLE}=1 for the traceback)",
                    file=sys.stderr,
                    flush=True,
                )
                exit_process(USAGE_ERROR)

        return run

    return decorate
