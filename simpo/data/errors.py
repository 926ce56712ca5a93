"""SimpoError, the base of every error simpo raises about its input (a config key, a data file or row, a chat template)
or its run's state: its message alone says what is wrong and how to fix it, so the commands print it without a traceback
(simpo/core/errors.py). It lives here, in the lowest layer that raises one, so that data and core errors share it."""


class SimpoError(Exception):
    """An error in what the user gave simpo (config, data, template) or in the run's state (a NaN step, a full disk,
    a folder in use), not a bug in simpo: the message is the report, and says what to do."""
