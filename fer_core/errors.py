"""Errors a user can act on: each message says what went wrong and what was expected."""

from __future__ import annotations


class FerCoreError(Exception):
    """Base class of every error fer_core raises on purpose."""


class ConfigError(FerCoreError, ValueError):
    """A configuration file or value is invalid; the message names the key."""


class InvalidArgument(FerCoreError, ValueError):
    """A function was given an argument it cannot use (a wrong type, a value out of range, an
    unknown name); the message names the argument and what was expected."""


class DataError(FerCoreError):
    """A dataset, folder or table does not have the expected layout or content."""


class ImageDecodeError(DataError):
    """An image file cannot be read (missing, corrupt, not an image, too large)."""


class ModelLoadError(FerCoreError):
    """A weights file is missing, of an unknown format or does not fit the architecture."""


class UntrustedPickleError(ModelLoadError):
    """A pickled checkpoint was given without explicitly trusting it."""


class MissingResultsError(DataError):
    """A reader asked only for stored results (``compute=False``) and some are not in the cache:
    ``missing`` of ``total`` faces lack their ``what``."""

    def __init__(self, what: str, missing: int, total: int) -> None:
        self.what, self.missing, self.total = what, missing, total
        super().__init__(f"{missing} of {total} faces have no stored {what}")
