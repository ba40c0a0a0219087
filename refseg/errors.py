"""User-facing errors: one clear line, exit code 2, no traceback."""


class RefsegError(Exception):
    """An error caused by the user's input (a file, an id, a field, an option).

    The message names what is at fault, e.g. ``"refs(unc).p: ref 17: ann_id 9 not in
    instances.json"``. The CLI prints it as one line and exits with code 2.
    """


class DataError(RefsegError):
    """A dataset, annotation or image file is missing, malformed or inconsistent."""


class PredictionError(RefsegError):
    """A predictions file is malformed or does not match the split it is scored on."""


class CheckpointError(RefsegError):
    """A checkpoint is truncated, of another model, or its keys do not match."""


class ConfigError(RefsegError):
    """An unknown configuration key or a value of the wrong type."""
