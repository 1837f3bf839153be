"""User-facing errors.

Anything a user can cause (a missing file, a bad config key, a corrupt
checkpoint, a vocabulary mismatch) raises a subclass of `UnitokError`; the CLI
prints its message on one line and exits with status 2 instead of a traceback.
"""


class UnitokError(Exception):
    """An error caused by the user's input, reported without a traceback."""


class ConfigError(UnitokError):
    """A config file or override is invalid (unknown key, wrong type)."""


class CheckpointError(UnitokError):
    """A checkpoint or pretrained directory is missing, incomplete or corrupt."""


class VocabMismatchError(UnitokError):
    """Data or a checkpoint was built with a different vocabulary manifest."""


class DataError(UnitokError):
    """Input data is missing or unreadable."""


class ContextLengthError(ConfigError, ValueError):
    """A generation request does not fit the model's context (also a ValueError for library callers)."""


def require_file(path, what: str = "file"):
    """Return `path` as a Path, raising a one-line `DataError` if it is not a file."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} not found: {p}")
    if not p.is_file():
        raise DataError(f"{what} is not a file: {p}")
    return p


def read_json(path, what: str = "file"):
    """Parse a JSON file, raising a one-line `CheckpointError` if it is missing or invalid."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: {what} is not valid JSON ({e})") from None
