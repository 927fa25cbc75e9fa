"""Errors a user can act on: each message says what went wrong and what was expected."""

from __future__ import annotations


class FerCoreError(Exception):
    """Base class of every error fer_core raises on purpose."""


class ConfigError(FerCoreError, ValueError):
    """A configuration file or value is invalid; the message names the key."""


class DataError(FerCoreError):
    """A dataset, folder or table does not have the expected layout or content."""


class ImageDecodeError(DataError):
    """An image file cannot be read (missing, corrupt, not an image, too large)."""


class ModelLoadError(FerCoreError):
    """A weights file is missing, of an unknown format or does not fit the architecture."""


class UntrustedPickleError(ModelLoadError):
    """A pickled checkpoint was given without explicitly trusting it."""
