"""Atomic writes: a crash leaves the old file or the new one, never half of one.

Every file the package writes (MRC, STAR, CSV, annotations, checkpoints) goes through
`atomic_write`; `remove_stale_temp_files` clears what a killed writer left behind. Kept
apart from the formats because it knows nothing of them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

# ----------------------------------------------------------------------------- consent


def refuse_to_replace(paths, *, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuse, before any work, to replace files a user already has.

    Every command checks all the files it will write (a folder counts when it holds
    files) and stops with one message naming them, unless `overwrite` says the user
    agreed.

    Raises:
        InputError: some of `paths` exist and `overwrite` is False.
    """
    from napari_cryossl.io.errors import InputError

    if overwrite:
        return
    taken = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            if any(path.iterdir()):
                taken.append(path)
        elif path.exists():
            taken.append(path)
    if taken:
        names = ", ".join(str(p) for p in taken)
        raise InputError(
            f"{names} {'exists' if len(taken) == 1 else 'exist'}: choose another output, "
            f"or replace with {flag}"
        )


# ----------------------------------------------------------------------------- atomic write


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file all-or-nothing: yield a temporary path beside `path`, then replace it.

    The caller writes the complete file to the yielded path (any library that takes a file
    name works: starfile, mrcfile, torch.save, pandas). On success the temporary file is
    fsync'ed, renamed over `path` with ``os.replace`` (atomic on POSIX and Windows within
    one folder) and the folder is fsync'ed, so after a crash or ``kill -9`` at any moment
    `path` holds either the old or the new content, never a mixture. On error the temporary
    file is removed and the exception propagates; `path` is untouched.

    The temporary name keeps the suffix of `path` (``.picks.star.<pid>-<random>.tmp.star``)
    so that libraries that choose a format from the suffix still do the right thing, and
    carries the writer's process id so that `remove_stale_temp_files` can clean up after a
    killed writer.

    Args:
        path: the destination file. Its folder must exist.

    Yields:
        The temporary path to write to (not created yet).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); folders cannot be opened for fsync on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(path: str | os.PathLike) -> int:
    """Delete temporary files that a killed `atomic_write` left beside `path`.

    Only files named like `atomic_write`'s temporaries for this exact `path`, whose writer
    process no longer exists, are removed; a live writer's file is never touched.

    Returns:
        How many files were removed.
    """
    path = Path(path)
    pattern = re.compile(
        rf"^\.{re.escape(path.name)}\.(\d+)-[0-9a-f]+\.tmp{re.escape(path.suffix)}$"
    )
    removed = 0
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return 0
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _process_alive(pid):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot tell): leave it
    return True
