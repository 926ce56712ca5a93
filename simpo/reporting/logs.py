"""One log format, on stdout, for every command of the package."""

import logging
import sys

import datasets
import transformers


def setup_logging(main_process: bool, library_level: int | None = None) -> None:
    """simpo's own messages (drops, resumes, summaries) at INFO on the main process, WARNING elsewhere. The training
    recipes pass the Trainer's process log level as library_level, which datasets and transformers then follow; the
    pipeline and evaluation commands pass none, and every library logs at simpo's level."""
    level = logging.INFO if main_process else logging.WARNING
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
        level=level if library_level is None else logging.WARNING,
    )
    if library_level is None:
        return
    logging.getLogger("simpo").setLevel(logging.INFO if main_process else library_level)
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)
