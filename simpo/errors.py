"""Every error simpo raises about what it was given or about its run's state, in one module.

A SimpoError is not a bug in simpo: its message says what is wrong (the key, file, row or line) and how to fix it, so
every command prints it alone, `<command>: error: <message>`, and exits with status 2 (simpo/run/commands.py,
`report_input_errors`); SIMPO_TRACEBACK=1 shows the traceback. Each kind also subclasses the builtin error a caller
of the library would catch for it (a bad value is a ValueError, a missing model a FileNotFoundError, ...). Any other
exception is a bug (or the environment's) and keeps its traceback.

This module imports nothing of simpo, so that every layer, the kernels included, raises from here.
"""


class SimpoError(Exception):
    """An error in what the user gave simpo (config, data, template, model) or in the run's state (a NaN step, a full
    disk, a folder in use), not a bug in simpo: the message is the report, and says what to do.

    A SimpoError may carry several problems found in one pass (e.g. every bad key of a config): `problems` holds them,
    one line each, and str() joins them with newlines; the commands print each as a line of its own."""

    def __init__(self, *problems: str):
        super().__init__(*problems)
        self.problems = [str(p) for p in problems]

    def __str__(self) -> str:
        return "\n".join(self.problems)


# What the user gave simpo.
class ConfigError(SimpoError, ValueError):
    """A config key or value that cannot be used (YAML file, command line or argument dataclass); the message says
    where it came from."""


class DataError(SimpoError, ValueError):
    """A problem with the data (training pairs, prompts, generations, questions), named by its file and line."""


class TemplateError(SimpoError, ValueError):
    """A chat template simpo cannot train with: none at all, one that fails on a conversation, or one whose
    rendering of a prompt is not how it renders the prompt's conversation."""


class ModelNotFound(SimpoError, FileNotFoundError):
    """A model or tokenizer key names neither a local folder nor a model the Hub (or its cache) has."""


class ParityError(SimpoError, ValueError):
    """An evaluation template would feed the model other tokens than training did (simpo/evaluation/templates.py)."""


class RewardFunctionError(SimpoError, ValueError):
    """A reward function failed or returned something that is not a score; the message names the row."""


class UnsupportedModel(SimpoError, NotImplementedError):
    """A model a chosen fast path cannot run exactly (a quantised LM head, an adapter on the head, a head transform
    the fused log-probs do not know): the message names the setting that turns the path off."""


# How the run was launched.
class LaunchError(SimpoError, RuntimeError):
    """A launch that accelerate would silently turn into something else than was asked for (FSDP on CPU, processes
    that would each train alone), or that would hang (a stale build lock)."""


class StaleBuildLock(LaunchError):
    """A torch extension build lock that no process holds: every DeepSpeed launch would wait on it forever."""


class FastPathError(SimpoError, RuntimeError):
    """A fast path (a kernel, a layout) whose results differ from the plain path's on this device beyond rounding:
    training on it would be wrong. The message names the figures and the setting that avoids it."""


# The run's state.
class NonFiniteError(SimpoError, FloatingPointError):
    """Training stopped before a NaN or infinity could reach the weights or a checkpoint."""


class DiskFullError(SimpoError, OSError):
    """A checkpoint or the final model could not be written because the disk is full."""


class FolderInUseError(SimpoError, RuntimeError):
    """Another live process writes this folder."""


class CheckpointChanged(SimpoError, RuntimeError):
    """A DeepSpeed checkpoint whose files are not the ones its run saved (their sha256 differs from its record, or
    the record is missing): its load would unpickle them, and a pickle can run code."""


class AtTheLastStep(SimpoError, RuntimeError):
    """Not a failure: a run resumed from a checkpoint of its last step stops the Trainer with it before the step past
    the end that transformers would otherwise train (simpo/run/resume.py); simpo/run/steps.py's train catches it and
    goes on to the final save. Its message, should it ever reach a command, says so."""


def all_error_classes() -> list[type[SimpoError]]:
    """SimpoError and every kind of it defined here (what the tests walk)."""
    found, pending = [], [SimpoError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending += cls.__subclasses__()
    return found
