"""Exceptions that the command line turns into one clear line and exit status 2."""


class VaelabError(Exception):
    """Bad usage or bad input: reported as `vaelab: error: <message>` with exit status 2."""


class DataError(VaelabError):
    """A data set, file or array that cannot be read or does not make sense."""


class ConfigError(VaelabError):
    """A configuration key or value that does not fit the config dataclass."""


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN, ...): exit status 1, checkpoints kept."""


class StorageError(RuntimeError):
    """A file could not be written (a full disk, an unwritable directory): exit status 1, the
    previous version of the file kept."""
