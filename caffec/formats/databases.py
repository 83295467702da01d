"""Caffe's databases of records: LMDB and LevelDB, read in key order, wrapping around.

Caffe's Data layer and its tools read these; records are usually ``Datum`` s
(:mod:`caffec.formats.datum`). lmdb and plyvel (the ``data`` extra) are imported
only when a database is opened.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caffec.errors import InternalError, UserError
from caffec.formats.lmdb_file import check_lmdb_file
from caffec.formats.optional import optional_module

NAMES = {"LMDB": "LMDB", "LEVELDB": "LevelDB"}  # as messages write the backends


def key_text(key: bytes) -> str:
    """A record key as messages show it (bytes that are not UTF-8 escaped)."""
    return key.decode("utf-8", errors="backslashreplace")


def _check_backend(path: Path, backend: str) -> None:
    """Say which backend a database is when the layer names the other one."""
    if not path.is_dir():
        return
    if backend == "LMDB" and not (path / "data.mdb").exists() and (path / "CURRENT").exists():
        raise UserError(
            f"{path} is a LevelDB database, but the layer reads it as LMDB",
            hint="set data_param { backend: LEVELDB }",
        )
    if backend == "LEVELDB" and (path / "data.mdb").exists():
        raise UserError(
            f"{path} is an LMDB database, but the layer reads it as LevelDB "
            "(Caffe's default backend)",
            hint="set data_param { backend: LMDB }",
        )


# py-lmdb refuses to open one environment twice in a process, and LevelDB locks a database
# against a second opening: every reader of a path in this process (a TRAIN and a TEST net
# on the same data, two data layers) shares one handle, closed when its last user closes.
_HANDLES: dict[tuple[str, str], list[Any]] = {}  # (backend, real path) -> [handle, users]
_HANDLES_LOCK = threading.Lock()


def _open_lmdb(path: Path) -> Any:
    lmdb = optional_module("lmdb", "lmdb")
    check_lmdb_file(path)  # a file shorter than its header says would be a SIGBUS
    try:
        return lmdb.open(
            str(path),
            readonly=True,
            lock=False,
            subdir=path.is_dir(),
            readahead=False,
            max_readers=512,
        )
    except lmdb.Error as err:
        raise UserError(f"cannot open the LMDB database {path}: {err}") from None


def _open_leveldb(path: Path) -> Any:
    plyvel = optional_module("plyvel", "plyvel")
    try:
        return plyvel.DB(str(path), create_if_missing=False)
    except (plyvel.Error, OSError) as err:
        hint = (
            "LevelDB lets one process open a database at a time; close the other "
            "reader, or convert the data to LMDB"
            if "lock" in str(err).lower()
            else None
        )
        raise UserError(
            f"cannot open the LevelDB database {path}: {_said(err)}", hint=hint
        ) from None


def _said(err: BaseException) -> str:
    """What lmdb or plyvel said (plyvel says it in bytes)."""
    said = err.args[0] if len(err.args) == 1 else err
    return said.decode(errors="replace") if isinstance(said, bytes) else str(said)


def _errors(backend: str) -> type[Exception]:
    """The base of what lmdb or plyvel raise for a database they cannot read."""
    if backend == "LMDB":
        return optional_module("lmdb", "lmdb").Error
    return optional_module("plyvel", "plyvel").Error


def _acquire(path: Path, backend: str) -> Any:
    key = (backend, str(path.resolve()))
    with _HANDLES_LOCK:
        entry = _HANDLES.get(key)
        if entry is None:
            handle = _open_lmdb(path) if backend == "LMDB" else _open_leveldb(path)
            entry = _HANDLES[key] = [handle, 0]
        entry[1] += 1
        return entry[0]


def _release(path: Path, backend: str) -> None:
    key = (backend, str(path.resolve()))
    with _HANDLES_LOCK:
        entry = _HANDLES.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _HANDLES[key]
            entry[0].close()


class Cursor:
    """Records of an LMDB or LevelDB database in key order, wrapping around at the end."""

    def __init__(self, path: Path, backend: str) -> None:
        self.path = path
        self.backend = backend
        self.closed = False
        _check_backend(path, backend)
        self._errors = _errors(backend)
        handle = _acquire(path, backend)
        try:
            with self._reading():
                if backend == "LMDB":
                    self._env = handle
                    self._txn = handle.begin(buffers=False)
                    self._cursor = self._txn.cursor()
                    self.empty = not self._cursor.first()
                else:
                    self._db = handle
                    self._iter = handle.iterator()
                    self._peek = next(self._iter, None)
                    self.empty = self._peek is None
        except BaseException:
            _release(path, backend)
            raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """lmdb's and plyvel's errors (a damaged page or block) as a UserError naming the
        database."""
        try:
            yield
        except self._errors as err:
            raise UserError(
                f"cannot read the {NAMES[self.backend]} database {self.path}: {_said(err)}",
                hint="the database is damaged (an interrupted write or copy?); convert or "
                "copy it again",
            ) from None

    def peek(self) -> tuple[bytes, bytes]:
        """The current record, staying on it."""
        if self.backend == "LMDB":
            with self._reading():
                return self._cursor.item()
        if self._peek is None:
            raise InternalError("read past the end of an empty LevelDB database")
        return self._peek

    def once(self) -> Iterator[tuple[bytes, bytes]]:
        """Every record once, in key order, from the first."""
        with self._reading():
            if self.backend == "LMDB":
                yield from self._txn.cursor()
            else:
                with self._db.iterator() as records:
                    yield from records

    def next(self) -> tuple[bytes, bytes]:
        """The current record; then step to the next one, back to the first after the last."""
        with self._reading():
            return self._step()

    def _step(self) -> tuple[bytes, bytes]:
        if self.backend == "LMDB":
            key, value = self._cursor.item()
            if not self._cursor.next():
                self._cursor.first()
            return key, value
        item = self._peek
        if item is None:
            raise InternalError("read past the end of an empty LevelDB database")
        self._peek = next(self._iter, None)
        if self._peek is None:
            self._iter.close()
            self._iter = self._db.iterator()
            self._peek = next(self._iter, None)
        return item

    def skip(self, count: int) -> None:
        """Step on as ``count`` next() calls would, going round the database once at most:
        where reading stands repeats every ``records`` steps (LMDB's steps read no values)."""
        with self._reading():
            if self.backend == "LMDB":
                for _ in range(count % self._env.stat()["entries"]):
                    if not self._cursor.next():
                        self._cursor.first()
                return
            with self._db.iterator(include_value=False) as keys:
                records = sum(1 for _ in keys)
            for _ in range(count % records):
                self._step()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.backend == "LMDB":
                self._txn.abort()
            else:
                self._iter.close()
        finally:
            _release(self.path, self.backend)


def open_db(path: str | Path, backend: str) -> Cursor:
    """Open a Caffe database (``backend`` LMDB or LEVELDB) for reading, wrapping around."""
    backend = backend.upper()
    if backend not in ("LMDB", "LEVELDB"):
        raise UserError(f"unknown database backend '{backend}'", hint="use LMDB or LEVELDB")
    path = Path(path)
    if not path.exists():
        raise UserError(f"the database {path} does not exist")
    return Cursor(path, backend)


def first_record(path: str | Path, backend: str) -> tuple[bytes, bytes] | None:
    """The first record of a database (None when empty), through the handle this process
    shares with the feeders reading it (py-lmdb cannot open an environment twice)."""
    cursor = open_db(path, backend)
    try:
        return None if cursor.empty else cursor.peek()
    finally:
        cursor.close()


def iter_db(path: str | Path, backend: str) -> Iterator[tuple[bytes, bytes]]:
    """Every record of a Caffe database once, in key order (empty databases: none)."""
    cursor = open_db(path, backend)
    try:
        yield from cursor.once()
    finally:
        cursor.close()
