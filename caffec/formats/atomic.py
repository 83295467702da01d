"""Writing files and folders so that nothing is lost: to a temporary name beside them, renamed
into place at the end. A reader sees the old one or the whole new one, never half of one,
and a failed write leaves the old one as it was."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from caffec.errors import UserError

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def replacing(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed over ``path`` when
    the block ends, removed when it fails. An OSError becomes a UserError naming ``path``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise UserError(
                f"{target}: cannot write: {err.strerror or err}",
                hint="check that the folder exists and is writable",
            ) from None
        raise


def write_atomically(path: PathLike, parts: Iterable[bytes | memoryview]) -> None:
    """Write ``parts`` one after another as the file ``path``, synced to disk before the
    rename (a snapshot survives a crash right after it)."""
    with replacing(path) as tmp, open(tmp, "xb") as f:
        for part in parts:
            f.write(part)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomically(path: PathLike, text: str) -> None:
    """:func:`write_atomically` for text (UTF-8)."""
    write_atomically(path, [text.encode("utf-8")])


@contextlib.contextmanager
def replacing_directory(path: PathLike) -> Iterator[Path]:
    """A new folder beside ``path`` for the block to fill; it takes ``path``'s place when the
    block ends (the old folder, if any, removed), and is removed when the block fails."""
    target = Path(path)
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as err:
        raise UserError(f"cannot write {target}: {err.strerror or err}") from None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
