"""Input errors: `InputError`, `InputWarning` and the checks every reader shares.

Every problem with an input file raises `InputError` (a ``ValueError``) whose message
names the file and the problem; readers never let another exception type escape on bad
bytes (the fuzz tests hold them to that). It sits below every other module of
`napari_cryossl.io` so that they all raise the same type with the same wording.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------------- errors


class InputError(ValueError):
    """A bad input file or argument; the message names the file and the problem.

    The CLI prints it as one line and exits with code 2; the widgets show it as a
    notification.
    """


class InputWarning(UserWarning):
    """An input file was usable but something was assumed (e.g. a missing voxel size)."""


def _fail(path: Any, problem: str) -> InputError:
    return InputError(f"{path}: {problem}")


def _positive_float(value, name: str, path: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not (math.isfinite(out) and out > 0):
        raise _fail(path, f"{name} must be a positive number, got {value!r}")
    return out


def _tomogram_shape(shape, path: Any) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
        ok = len(out) == 3 and min(out) > 0 and all(float(s) == int(s) for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise _fail(
            path, f"tomogram_shape must be three positive integers (Z, Y, X), got {shape!r}"
        )
    return out


def _read_text(path: Path, kind: str) -> str:
    try:
        if path.is_dir():
            raise _fail(path, f"is a folder, not a {kind} file")
        raw = path.read_bytes()
    except FileNotFoundError as err:
        raise _fail(path, "no such file") from err
    except PermissionError as err:
        raise _fail(path, "cannot read the file (permission denied)") from err
    except OSError as err:
        raise _fail(path, f"cannot read the file ({err.strerror or err})") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _fail(path, f"not a {kind} text file (not UTF-8 at byte {err.start})") from err
    if "\x00" in text:
        raise _fail(path, f"not a {kind} text file (contains NUL bytes)")
    return text
