"""Writing files and folders so that nothing is lost: to a temporary name beside them, renamed
into place at the end. A reader sees the old one or the whole new one, never half of one,
and a failed write leaves the old one as it was. A temporary file's name holds the id of
the process writing it, so that what a killed process left behind can be swept away."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from caffec.errors import UserError

PathLike = str | os.PathLike[str]

# .NAME.PID.HEX.tmp: a temporary file of this module's, beside NAME
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def disk_full(err: OSError | str) -> str | None:
    """The words for a full disk (no space left on device, or disk quota exceeded) where
    ``err`` (an OSError, or what a program printed) says it is full, else None; h5py and
    compilers say it in words only, without an errno."""
    for number in (errno.ENOSPC, errno.EDQUOT):
        said = os.strerror(number)
        if getattr(err, "errno", None) == number or said in str(err):
            return said.lower()
    return None


def cannot_write(
    path: PathLike, err: OSError, full_hint: str = "free some space on that disk"
) -> UserError:
    """The UserError for ``err`` while writing ``path``; a full disk says so, with
    ``full_hint``."""
    path = _as_asked(Path(path))
    full = disk_full(err)
    if full:
        return UserError(f"{path}: cannot write: {full}", hint=full_hint)
    return UserError(
        f"{path}: cannot write: {err.strerror or err}",
        hint="check that the folder exists and is writable",
    )


# the temporary folders being filled, and the folders they will become
_FILLING: dict[Path, Path] = {}


def _as_asked(path: Path) -> Path:
    """``path`` as the user named it: a path in a temporary folder being filled is one in
    the folder it becomes (which may itself be filled by an outer block)."""
    for tmp, target in list(_FILLING.items()):
        if path == tmp or tmp in path.parents:
            return _as_asked(target / path.relative_to(tmp))
    return path


@contextlib.contextmanager
def replacing(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed over ``path`` when
    the block ends, removed when it fails. An OSError becomes a UserError naming ``path``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise cannot_write(target, err) from None
        raise


def sweep_temporaries(prefix: PathLike) -> list[Path]:
    """Remove the temporary files that processes killed while writing (kill -9, a crash,
    a power cut) left beside the files whose paths start with ``prefix``; those of live
    processes stay. The paths removed."""
    stem = Path(prefix)
    removed = []
    for entry in stem.parent.glob(f".{glob.escape(stem.name)}*.tmp"):
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or not match["name"].startswith(stem.name):
            continue
        if not _alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
        raise cannot_write(target, err) from None
    _FILLING[tmp] = target
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as err:  # Ctrl-C too: no half-written folder stays
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and disk_full(err):
            raise cannot_write(target, err) from None
        raise
    finally:
        del _FILLING[tmp]
