"""Writing a new LMDB or LevelDB database of records, as Caffe's tools do: every tool that
makes a database (convert-mnist, convert-imageset, convert-cifar, convert-mnist-siamese,
extract-features) writes through :class:`DBWriter`, so a failed run leaves nothing
half-written and an existing database is never overwritten."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from types import TracebackType

from caffec.errors import UserError
from caffec.formats.optional import optional_module

PathLike = str | os.PathLike[str]

COMMIT_EVERY = 1000  # records per transaction, as Caffe's tools commit


def backend_name(name: str) -> str:
    """``lmdb`` or ``leveldb`` (any case), or a UserError naming the two."""
    backend = name.lower()
    if backend not in ("lmdb", "leveldb"):
        raise UserError(f"unknown database backend '{name}'", hint="use lmdb or leveldb")
    return backend


class DBWriter:
    """A new LMDB or LevelDB database, written under a temporary name and renamed at the end."""

    def __init__(self, out: PathLike, backend: str) -> None:
        self.backend = backend_name(backend)
        self.out = Path(out)
        if self.out.exists() or self.out.is_symlink():
            raise UserError(
                f"{self.out} already exists; caffec does not overwrite a database",
                hint="remove it first, or choose another output path",
            )
        parent = self.out.parent
        if not parent.is_dir():
            raise UserError(
                f"cannot create {self.out}: the folder {parent} does not exist",
                hint="create the folder first",
            )
        self.tmp = parent / f".{self.out.name}.{secrets.token_hex(4)}.tmp"
        self.pending: list[tuple[bytes, bytes]] = []
        self.count = 0
        if self.backend == "lmdb":
            self.lmdb = optional_module("lmdb", "lmdb")
            self.map_size = 64 << 20
            try:
                self.env = self.lmdb.open(
                    str(self.tmp), map_size=self.map_size, subdir=True, sync=False, metasync=False
                )
            except self.lmdb.Error as err:
                raise UserError(f"cannot create the LMDB database {self.out}: {err}") from None
        else:
            plyvel = optional_module("plyvel", "plyvel")
            try:
                self.db = plyvel.DB(
                    str(self.tmp),
                    create_if_missing=True,
                    error_if_exists=True,
                    write_buffer_size=64 << 20,
                )
            except (plyvel.Error, OSError) as err:
                raise UserError(f"cannot create the LevelDB database {self.out}: {err}") from None

    def put(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        self.count += 1
        if len(self.pending) >= COMMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if self.backend == "leveldb":
            with self.db.write_batch() as batch:
                for key, value in self.pending:
                    batch.put(key, value)
            self.pending.clear()
            return
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
                break
            except self.lmdb.MapFullError:  # the transaction was aborted; grow and redo it
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
        self.pending.clear()

    def _close(self) -> None:
        if self.backend == "lmdb":
            self.env.close()
        else:
            self.db.close()

    def finish(self) -> None:
        self.flush()
        if self.backend == "lmdb":
            self.env.sync(True)
        self._close()
        if self.out.exists():
            raise UserError(f"{self.out} appeared while it was being written; not replacing it")
        os.rename(self.tmp, self.out)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DBWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            try:
                self.finish()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
