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


def one_line(e: BaseException) -> str:
    """`Type: first sentence of the first line` of an error, without terminal colour codes."""
    import re

    lines = [x.strip() for x in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if x.strip()]
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z])", lines[0])[0] if lines else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


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


def inside(directory, name, what: str = "name"):
    """`directory / name` for a name read from a file (model.json, a tokenizer's config.json), which
    must be the plain name of a file or folder: a path ("../x", "/etc", "a/b", "C:x") would reach
    outside `directory`. Anything else raises a one-line `CheckpointError`."""
    from pathlib import Path, PurePosixPath, PureWindowsPath

    plain = isinstance(name, str) and name not in ("", "..") and "\0" not in name
    if not (plain and PurePosixPath(name).name == name and PureWindowsPath(name).name == name):
        raise CheckpointError(f"{directory}: {what} {name!r} is not the plain name of a file or folder inside it")
    return Path(directory) / name
