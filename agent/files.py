"""Atomic file writes that never go through special files.

Promise of ``atomic_writer(path)``: the content lands in ``path`` all at once (a temp file
beside it, then a rename) or not at all, and no temp file stays behind on any error path.
A target that exists and is not a regular file (a directory, a device such as ``/dev/full``, a
FIFO, or a symlink to one of those) is refused before anything is written: renaming a temp
file over it would replace a device node with a regular file when running as root.

Base layer: depends only on ``agent.errors``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from stat import S_ISREG
from typing import IO

from agent.errors import RecommenderError


def check_target(path: Path, error: type[RecommenderError], what: str = "output file") -> None:
    """Raise ``error`` unless ``path`` is a regular file (symlinks followed) or does not exist yet."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(f"cannot use {path} as the {what}: {exc.strerror or exc}") from None
    if not S_ISREG(mode):
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise error(f"cannot use {path} as the {what}: it is {kind}")


@contextmanager
def atomic_writer(
    path: Path, error: type[RecommenderError], what: str = "output file", *, encoding: str = "utf-8"
) -> Iterator[IO[str]]:
    """A text handle whose content replaces ``path`` when the block ends without an error.

    Raises ``error`` (one line) for a refused target or a failed write (disk full, permissions);
    the temp file is removed whatever happens.
    """
    check_target(path, error, what)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding=encoding) as handle:
            yield handle
        tmp.replace(path)
    except OSError as exc:
        raise error(f"cannot write the {what} {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
