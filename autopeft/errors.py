"""Errors that autopeft reports to users as one clear line."""


class AutopeftError(Exception):
    """Base class: the message is complete and meant for the user as is."""


class ConfigError(AutopeftError, ValueError):
    """A configuration value, key or file is invalid."""


class BackboneError(AutopeftError, ValueError):
    """A backbone cannot be built, loaded or hosted."""


class BudgetError(ConfigError):
    """A parameter budget below the cheapest candidate of a search space."""


class SearchFailed(AutopeftError):
    """A search ended without anything to choose: every trial failed, or the supernet diverged."""


class DataError(AutopeftError, ValueError):
    """A dataset file, line or image is missing or invalid."""


class RunInterrupted(AutopeftError):
    """Ctrl-C during training; the last epoch checkpoint is on disk (the command exits 130, as for SIGINT).
    ``resumable`` is False when nothing was saved to continue from."""

    def __init__(self, message: str, resumable: bool = True) -> None:
        super().__init__(message)
        self.resumable = resumable


class RunLocked(ConfigError):
    """Another live autopeft process holds the run directory's lock."""
