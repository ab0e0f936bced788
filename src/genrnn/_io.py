"""Small file helpers shared by checkpoints and downloads.

Every file genrnn writes goes through :func:`atomic_path`: the content is
written under a temporary name in the same folder, flushed to disk, then
renamed over the target. A crash or ``kill -9`` at any moment leaves either the
old file or the new one, never a half-written one. A full disk (or a file-size
limit) is a :class:`DiskFullError` that names the file and says the old one is
unchanged, and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

from . import faults
from .errors import DiskFullError

TMP_SUFFIX = ".tmp"  # atomic_path's temporary files: .NAME.XXXXXXXX.tmp

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    The caller writes the whole file to the yielded path. If the block raises,
    the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with disk_errors(path, kept=path.exists()):
            yield tmp_path
            faults.point("write")  # the crash tests' kill -9 between the bytes and the rename
            with open(tmp_path, "rb+") as f:  # make the bytes durable before the rename
                os.fsync(f.fileno())
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


# a full file system, a file-size limit (RLIMIT_FSIZE), a disk quota
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


@contextlib.contextmanager
def disk_errors(path: PathLike, kept: bool = False) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into one clear :class:`DiskFullError`;
    ``kept``: say that the file already there is unchanged (an atomic write)."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        after = f"; the {Path(path).name} already there is unchanged" if kept else ""
        raise DiskFullError(f"cannot write {path}: {e.strerror or e} (free some space, or write elsewhere){after}") \
            from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: PathLike) -> list:
    """Delete the temporary files a ``kill -9`` left in ``folder`` mid-write
    (``atomic_path``'s ``.NAME.*.tmp``); returns their names."""
    gone = []
    for p in Path(folder).glob(".*" + TMP_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            gone.append(p.name)
    return gone
