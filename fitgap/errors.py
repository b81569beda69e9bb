"""The project's own error types: raised with the config key, argument or path named, and reported
by the entry points as one line (exit code 2). Anything else is a bug or a library failure and keeps
its traceback."""


class FitgapError(Exception):
    """An input, config or file the user can fix; str() says what and where."""


class InputError(FitgapError, ValueError):
    """A bad argument or input (a benchmark layout, a CSV row, a perturbation, a model choice)."""


class MissingInput(FitgapError, FileNotFoundError):
    """A file or folder the user named does not exist or holds nothing usable."""


class ConfigError(FitgapError, ValueError):
    """A config that cannot run; the message names the key."""


class CheckpointError(FitgapError, RuntimeError):
    """A checkpoint that cannot be read or does not fit."""
