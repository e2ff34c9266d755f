"""Atomic file writes: a reader sees either the old file or the complete new one, never a torn write.

Every file featlift writes that someone may later trust (features, checkpoints, model directories,
cache entries) goes through :func:`atomic_write`: the content goes to a temporary file in the same
folder, is flushed to disk, and only then renamed over the target with :func:`os.replace` (atomic on
POSIX and Windows within one file system). A crash or kill in the middle leaves the previous file (or
no file) in place plus, at worst, a stray ``*.tmp`` file, never a truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TMP_SUFFIX", "atomic_write"]

TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it replaces ``path`` atomically.

    Write the whole file to the yielded path (any writer: ``save_file``, ``torch.save``, ``Image.save``
    with an explicit ``format=``). On an exception the temporary file is removed and ``path`` is left
    untouched. The parent folder must exist.

    Example::

        with atomic_write(out / "x.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    target = Path(path)
    # Not tempfile.mkstemp: its files are 0600, while an output file should get the usual umask mode.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        with open(tmp, "rb+") as handle:  # flush the writer's data before the rename makes it visible
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
