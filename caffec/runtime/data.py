"""Feeding a compiled net's data layers from their sources, as Caffe's data layers do.

:func:`make_feeder` turns one ``feeders`` entry of an artifact's manifest
into a :class:`Feeder`, whose :meth:`Feeder.next` hands back one batch per
call: a dict from top name to an array of exactly the top's compiled shape.

- **Data**: LMDB or LevelDB databases of ``Datum`` records (raw uint8
  ``data``, ``float_data``, or ``encoded`` JPEG/PNG), read in key order and
  wrapping around at the end; labels from ``Datum.label``.
- **ImageData**: a list file of ``path label`` lines (``root_folder``
  prepended), optionally resized to ``new_height`` x ``new_width``, colour or
  gray, optionally shuffled (again at every pass, as Caffe does).
- **HDF5Data**: a list file of .h5 files, one dataset per top; optionally
  shuffled (the files' order and each file's rows, again at every pass).
- **WindowData**: R-CNN's window file: foreground and background windows
  sampled at random, warped to ``crop_size`` with ``context_pad``.

Data, ImageData and WindowData go through Caffe's TransformationParameter
(:mod:`caffec.runtime.transform`); HDF5Data is not transformed, as in Caffe.
Colour images come out in OpenCV's BGR channel order, as Caffe trains on them.

Batches are prepared on a thread, a few ahead (``data_param.prefetch``,
default 4), so the compiled step does not wait for data that is faster than
the net. Everything random (shuffles, crops, flips, window sampling) comes
from numpy Generators seeded from ``seed`` and the layer's name, so a run is
reproducible. Relative paths are looked up from the working directory, as
Caffe does, then from the prototxt's folder (``net_dir``); paths inside list
files also from the list file's own folder.

This module imports numpy, protobuf and the standard library; lmdb, plyvel,
h5py and Pillow are imported only when a source needs them.
"""

from __future__ import annotations

import importlib
import queue
import re
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from caffec.errors import InternalError, UserError
from caffec.frontend import caffe_pb2
from caffec.runtime.transform import (
    Transformer,
    decode_image,
    fmt,
    read_image,
    resize_bilinear,
)

__all__ = [
    "Feeder",
    "datum_array",
    "first_record",
    "iter_db",
    "make_feeder",
    "open_db",
    "parse_datum",
    "parse_image_list",
]

Shape = tuple[int, ...]
Batch = dict[str, np.ndarray]

_LOOKUP_HINT = (
    "relative paths are looked up from the working directory (as Caffe does), "
    "then from the prototxt's folder"
)


def optional_module(module: str, package: str) -> ModuleType:
    """An optional library (the ``data`` extra), or a UserError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(
            f"reading this data source needs the Python package '{package}'",
            hint=f"pip install {package} (or pip install 'caffec[data]')",
        ) from err


def _resolver(*folders: Path | None) -> Callable[[str], Path | None]:
    """Find a path as given (relative to the working directory), then in ``folders``."""

    def resolve(name: str) -> Path | None:
        if not name:
            return None
        candidates = [Path(name)]
        if not Path(name).is_absolute():
            candidates += [Path(f) / name for f in folders if f is not None]
        return next((c for c in candidates if c.exists()), None)

    return resolve


# --------------------------------------------------------------------------- databases


def _key_text(key: bytes) -> str:
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
        raise UserError(f"cannot open the LevelDB database {path}: {err}", hint=hint) from None


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


class _Cursor:
    """Records of an LMDB or LevelDB database in key order, wrapping around at the end."""

    def __init__(self, path: Path, backend: str) -> None:
        self.path = path
        self.backend = backend
        self.closed = False
        _check_backend(path, backend)
        handle = _acquire(path, backend)
        try:
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

    def peek(self) -> tuple[bytes, bytes]:
        """The current record, staying on it."""
        if self.backend == "LMDB":
            return self._cursor.item()
        if self._peek is None:
            raise InternalError("read past the end of an empty LevelDB database")
        return self._peek

    def once(self) -> Iterator[tuple[bytes, bytes]]:
        """Every record once, in key order, from the first."""
        if self.backend == "LMDB":
            yield from self._txn.cursor()
        else:
            with self._db.iterator() as records:
                yield from records

    def next(self) -> tuple[bytes, bytes]:
        """The current record; then step to the next one, back to the first after the last."""
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


def open_db(path: str | Path, backend: str) -> _Cursor:
    """Open a Caffe database (``backend`` LMDB or LEVELDB) for reading, wrapping around."""
    backend = backend.upper()
    if backend not in ("LMDB", "LEVELDB"):
        raise UserError(f"unknown database backend '{backend}'", hint="use LMDB or LEVELDB")
    path = Path(path)
    if not path.exists():
        raise UserError(f"the database {path} does not exist")
    return _Cursor(path, backend)


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


def parse_datum(value: bytes, where: str) -> caffe_pb2.Datum:
    """A Datum from a database record, or a UserError naming the record."""
    try:
        return caffe_pb2.Datum.FromString(value)
    except DecodeError as err:
        raise UserError(
            f"{where} is not a Caffe Datum (corrupt record: {err})",
            hint="the database is damaged or was not written by Caffe's tools; convert it again",
        ) from None


def datum_array(datum: caffe_pb2.Datum, where: str, mode: str | None = None) -> np.ndarray:
    """A Datum's image as a (C, H, W) array: uint8 for ``data``, float32 for ``float_data``.

    Encoded Datums are decoded (``mode``: "color", "gray" or None for the
    image's own channels).
    """
    if datum.encoded:
        return decode_image(datum.data, mode, where)
    shape = (datum.channels, datum.height, datum.width)
    count = shape[0] * shape[1] * shape[2]
    if min(shape) <= 0:
        raise UserError(
            f"{where}: the Datum's shape {fmt(shape)} is not a valid image shape",
            hint="the database is damaged or was not written by Caffe's tools",
        )
    if len(datum.data):
        if len(datum.data) != count:
            raise UserError(
                f"{where}: the Datum says {fmt(shape)} ({count} bytes) but holds "
                f"{len(datum.data)} bytes of data",
                hint="the database is damaged; convert it again",
            )
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    if len(datum.float_data) != count:
        raise UserError(
            f"{where}: the Datum says {fmt(shape)} ({count} values) but holds "
            f"{len(datum.float_data)} float_data values",
            hint="the database is damaged; convert it again",
        )
    return np.asarray(datum.float_data, dtype=np.float32).reshape(shape)


# --------------------------------------------------------------------------- sources


def _effective_transform(p: Any, old: Any) -> caffe_pb2.TransformationParameter:
    """transform_param, with the deprecated copies in the layer's own message filling gaps."""
    t = caffe_pb2.TransformationParameter()
    t.CopyFrom(p.transform_param)
    for name in ("scale", "mean_file", "crop_size", "mirror"):
        if old is not None and not t.HasField(name) and old.HasField(name):
            setattr(t, name, getattr(old, name))
    return t


class _Source:
    """Makes batches one after the other; used by one thread at a time."""

    def find(self, resolve: Callable, source: str, what: str, field: str) -> Path:
        """The layer's source file, or a UserError naming the layer, the file and the field."""
        found = resolve(source)
        if found is None:
            raise UserError(
                f"layer '{self.layer}': {what} '{source}' does not exist",
                hint=f"check {field}; {_LOOKUP_HINT}",
            )
        return found

    def __init__(
        self,
        *,
        layer: str,
        tops: list[str],
        shapes: Mapping[str, Shape],
        dtype: np.dtype,
        phase: str,
        net_dir: Path | None,
    ) -> None:
        self.layer = layer
        self.tops = tops
        self.shapes = {t: tuple(int(d) for d in shapes[t]) for t in tops}
        self.dtype = dtype
        self.phase = phase
        self.net_dir = net_dir
        self.batch_size = self.shapes[tops[0]][0] if self.shapes[tops[0]] else 1

    def new_batch(self) -> Batch:
        return {t: np.empty(self.shapes[t], dtype=self.dtype) for t in self.tops}

    def check_image(self, transform: Transformer, chw: Shape, where: str, hint: str) -> None:
        """Refuse an image whose transformed shape is not the data top's compiled shape."""
        transform.check(chw, where)
        top = self.tops[0]
        want = self.shapes[top][1:]
        got = transform.out_shape(chw)
        if got != want:
            after = f" ({fmt(got)} after the crop)" if got != chw else ""
            suggestion = ",".join(str(d) for d in (self.batch_size, *got))
            raise UserError(
                f"{where} is {fmt(chw)}{after}, but the net's top '{top}' was compiled "
                f"as {fmt(self.shapes[top])}",
                hint=f"compile with --shape {top}={suggestion} to fit the data, or change the "
                f"data{hint}",
            )

    def check_label_top(self) -> None:
        if len(self.tops) > 1:
            label = self.tops[1]
            if int(np.prod(self.shapes[label])) != self.batch_size:
                raise UserError(
                    f"layer '{self.layer}': the label top '{label}' was compiled as "
                    f"{fmt(self.shapes[label])}; it takes one label per item of a batch of "
                    f"{self.batch_size}",
                    hint=f"compile with --shape {label}={self.batch_size}",
                )

    def batch(self) -> Batch:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _DataSource(_Source):
    """Caffe's Data layer."""

    def __init__(self, p: caffe_pb2.LayerParameter, resolve: Callable, rngs: list, **kw: Any):
        super().__init__(**kw)
        dp = p.data_param
        self.check_label_top()
        backend = caffe_pb2.DataParameter.DB.Name(dp.backend)
        found = self.find(resolve, dp.source, "the database", "data_param.source (and backend)")
        self.name = dp.source
        self.transform = Transformer(
            _effective_transform(p, dp),
            self.phase,
            self.dtype,
            rngs[1],
            resolve,
            f"layer '{self.layer}'",
        )
        force = self.transform.force
        self.mode = force if force is not None else ("color" if dp.force_encoded_color else None)
        self.cursor = _Cursor(found, backend)
        self.checked: Shape | None = None
        try:
            if self.cursor.empty:
                raise UserError(
                    f"layer '{self.layer}': the database {found} is empty",
                    hint="convert some data into it (convert_mnist, convert_imageset)",
                )
            self._image(*self.cursor.peek())  # check the first record now, as Caffe's setup
            for _ in range(int(rngs[0].integers(dp.rand_skip)) if dp.rand_skip else 0):
                self.cursor.next()
        except BaseException:
            self.cursor.close()
            raise

    def _image(self, key: bytes, value: bytes) -> tuple[np.ndarray, int]:
        where = f"layer '{self.layer}': record '{_key_text(key)}' of {self.name}"
        datum = parse_datum(value, where)
        image = datum_array(datum, where, self.mode)
        if image.shape != self.checked:
            self.check_image(
                self.transform,
                image.shape,
                where,
                "" if datum.encoded else " (a Datum's channels, height and width)",
            )
            self.checked = image.shape
        return image, datum.label

    def batch(self) -> Batch:
        out = self.new_batch()
        data = out[self.tops[0]]
        labels = np.empty(self.batch_size, dtype=self.dtype)
        for i in range(self.batch_size):
            image, labels[i] = self._image(*self.cursor.next())
            self.transform(image, data[i])
        if len(self.tops) > 1:
            out[self.tops[1]] = labels.reshape(self.shapes[self.tops[1]])
        return out

    def close(self) -> None:
        self.cursor.close()


_LINE = re.compile(r"^(?P<path>.*\S)\s+(?P<label>[+-]?\d+)\s*$")


def _read_list(path: Path, layer: str, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError as err:
        raise UserError(f"layer '{layer}': cannot read the {what} {path}: {err.strerror}") from None


def parse_image_list(path: Path, what: str) -> list[tuple[str, int, int]]:
    """The ``path label`` lines of an image list: (path, label, line number) each.

    As in Caffe, the label is the last field, so paths may hold spaces; blank
    lines are skipped. ``what`` starts error messages (e.g. the layer).
    """
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise UserError(f"{what}: cannot read the image list {path}: {err.strerror}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise UserError(
                f"{what}: line {number} of {path} is {line.strip()!r}; an image list holds "
                "'path label' lines with an integer label",
            )
        lines.append((match["path"].strip(), int(match["label"]), number))
    if not lines:
        raise UserError(f"{what}: the image list {path} names no images")
    return lines


class _ImageDataSource(_Source):
    """Caffe's ImageData layer."""

    def __init__(self, p: caffe_pb2.LayerParameter, resolve: Callable, rngs: list, **kw: Any):
        super().__init__(**kw)
        ip = p.image_data_param
        self.check_label_top()
        found = self.find(resolve, ip.source, "the image list", "image_data_param.source")
        self.list_file = found
        self.lines = parse_image_list(found, f"layer '{self.layer}'")
        if (ip.new_height > 0) != (ip.new_width > 0):
            raise UserError(
                f"layer '{self.layer}': new_height and new_width must both be set, or neither",
                hint="give both to resize the images, or remove both",
            )
        self.size = (ip.new_height, ip.new_width) if ip.new_height else None
        self.mode = "color" if ip.is_color else "gray"
        self.root = ip.root_folder
        self.resolve = _resolver(self.net_dir, found.parent)
        self.resolved: dict[int, Path] = {}
        self.shuffle = ip.shuffle
        self.rng = rngs[0]
        self.transform = Transformer(
            _effective_transform(p, ip),
            self.phase,
            self.dtype,
            rngs[1],
            resolve,
            f"layer '{self.layer}'",
        )
        self.checked: Shape | None = None
        if self.shuffle:
            self._shuffle()
        self.position = 0
        if ip.rand_skip:
            skip = int(self.rng.integers(ip.rand_skip))
            if skip >= len(self.lines):
                raise UserError(
                    f"layer '{self.layer}': rand_skip drew {skip}, but {found} lists only "
                    f"{len(self.lines)} images",
                    hint="lower image_data_param.rand_skip",
                )
            self.position = skip
        self._image(self.position)  # fail now on a missing or ill-fitting first image

    def _shuffle(self) -> None:
        order = self.rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def _image(self, index: int) -> np.ndarray:
        name, _, number = self.lines[index]
        where = f"layer '{self.layer}': line {number} of {self.list_file}"
        path = self.resolved.get(number)
        if path is None:
            path = self.resolve(self.root + name)
            if path is None:
                raise UserError(
                    f"{where} names '{self.root + name}', which does not exist",
                    hint=f"check the list and image_data_param.root_folder; {_LOOKUP_HINT}",
                )
            self.resolved[number] = path
        image = read_image(path, self.mode, where)
        if self.size is not None:
            image = resize_bilinear(image, *self.size)
        if image.shape != self.checked:
            hint = "" if self.size else ", or resize it with new_height and new_width"
            self.check_image(self.transform, image.shape, f"{where}: the image {path}", hint)
            self.checked = image.shape
        return image

    def batch(self) -> Batch:
        out = self.new_batch()
        data = out[self.tops[0]]
        labels = np.empty(self.batch_size, dtype=self.dtype)
        for i in range(self.batch_size):
            self.transform(self._image(self.position), data[i])
            labels[i] = self.lines[self.position][1]
            self.position += 1
            if self.position >= len(self.lines):
                self.position = 0
                if self.shuffle:
                    self._shuffle()
        if len(self.tops) > 1:
            out[self.tops[1]] = labels.reshape(self.shapes[self.tops[1]])
        return out


class _HDF5Source(_Source):
    """Caffe's HDF5Data layer: no transformation, one dataset per top."""

    def __init__(self, p: caffe_pb2.LayerParameter, resolve: Callable, rngs: list, **kw: Any):
        super().__init__(**kw)
        hp = p.hdf5_data_param
        self.h5py = optional_module("h5py", "h5py")
        found = self.find(resolve, hp.source, "the HDF5 list file", "hdf5_data_param.source")
        self.list_file = found
        resolve_entry = _resolver(self.net_dir, found.parent)
        self.files: list[Path] = []
        for number, line in enumerate(_read_list(found, self.layer, "HDF5 list file"), 1):
            for name in line.split():  # Caffe reads whitespace-separated names
                path = resolve_entry(name)
                if path is None:
                    raise UserError(
                        f"layer '{self.layer}': line {number} of {found} names '{name}', "
                        "which does not exist",
                        hint=f"check the list; {_LOOKUP_HINT}, then from the list's folder",
                    )
                self.files.append(path)
        if not self.files:
            raise UserError(f"layer '{self.layer}': the HDF5 list file {found} names no files")
        self.shuffle = hp.shuffle
        self.rng = rngs[0]
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self.current_file = 0
        self._load(self.files[self.file_order[0]])
        self.current_row = 0

    def _load(self, path: Path) -> None:
        """Read every top's dataset from one file, as Caffe's LoadHDF5FileData."""
        arrays: dict[str, np.ndarray] = {}
        try:
            with self.h5py.File(path, "r") as f:
                for top in self.tops:
                    if top not in f or not isinstance(f[top], self.h5py.Dataset):
                        names = sorted(k for k in f if isinstance(f[k], self.h5py.Dataset))
                        raise UserError(
                            f"layer '{self.layer}': the HDF5 file {path} has no dataset "
                            f"'{top}' (one dataset per top, named as the top)",
                            hint=f"its datasets are: {', '.join(names) or 'none'}",
                        )
                    dataset = f[top]
                    if dataset.dtype.kind not in "biuf" or dataset.ndim == 0:
                        raise UserError(
                            f"layer '{self.layer}': the dataset '{top}' of {path} holds "
                            f"{dataset.dtype} {fmt(dataset.shape)}; HDF5Data reads arrays "
                            "of numbers with one row per item",
                        )
                    arrays[top] = np.asarray(dataset[()], dtype=self.dtype)
        except OSError as err:
            raise UserError(
                f"layer '{self.layer}': cannot read the HDF5 file {path}: {err}"
            ) from None
        rows = {top: a.shape[0] for top, a in arrays.items()}
        if len(set(rows.values())) != 1:
            listed = ", ".join(f"'{t}' {n}" for t, n in rows.items())
            raise UserError(
                f"layer '{self.layer}': the datasets of {path} have different numbers of rows "
                f"({listed})",
                hint="every top's dataset needs one row per item",
            )
        if next(iter(rows.values())) == 0:
            raise UserError(f"layer '{self.layer}': the datasets of {path} have no rows")
        for top, array in arrays.items():
            want = self.shapes[top]
            row = array.shape[1:]
            if int(np.prod(row)) != int(np.prod(want[1:])):
                suggestion = ",".join(str(d) for d in (want[0], *row))
                raise UserError(
                    f"layer '{self.layer}': the rows of dataset '{top}' in {path} are "
                    f"{fmt(row)}, but the net's top '{top}' was compiled as {fmt(want)}",
                    hint=f"compile with --shape {top}={suggestion} to fit the data, or change "
                    "the data",
                )
            arrays[top] = array.reshape((array.shape[0], *want[1:]))
        self.arrays = arrays
        self.rows = next(iter(rows.values()))
        self.row_order = np.arange(self.rows)
        if self.shuffle:
            self.rng.shuffle(self.row_order)

    def _next_row(self) -> None:
        """Caffe's HDF5DataLayer::Next."""
        self.current_row += 1
        if self.current_row == self.rows:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.shuffle:
                        self.rng.shuffle(self.file_order)
                self._load(self.files[self.file_order[self.current_file]])
            self.current_row = 0
            if self.shuffle:
                self.rng.shuffle(self.row_order)

    def batch(self) -> Batch:
        out = self.new_batch()
        for i in range(self.batch_size):
            row = self.row_order[self.current_row]
            for top in self.tops:
                out[top][i] = self.arrays[top][row]
            self._next_row()
        return out


def _c_round(x: float) -> int:
    """C's round(): halves away from zero."""
    return int(np.floor(x + 0.5)) if x >= 0 else -int(np.floor(-x + 0.5))


class _WindowDataSource(_Source):
    """Caffe's WindowData layer (R-CNN fine-tuning): sampled windows, warped."""

    def __init__(self, p: caffe_pb2.LayerParameter, resolve: Callable, rngs: list, **kw: Any):
        super().__init__(**kw)
        wp = p.window_data_param
        self.check_label_top()
        found = self.find(resolve, wp.source, "the window file", "window_data_param.source")
        self.window_file = found
        t = _effective_transform(p, wp)
        self.what = f"layer '{self.layer}'"
        self.crop = int(t.crop_size)
        if self.crop <= 0:
            raise UserError(f"{self.what}: WindowData needs transform_param.crop_size")
        if 2 * wp.context_pad >= self.crop:
            raise UserError(
                f"{self.what}: context_pad {wp.context_pad} leaves nothing of a "
                f"{self.crop}-pixel crop",
                hint="context_pad must be less than half of crop_size",
            )
        # The mean, scale and checks are the transformer's; the warping is the layer's own.
        self.transform = Transformer(t, self.phase, self.dtype, rngs[1], resolve, self.what)
        self.rng = rngs[0]
        self.context_pad = int(wp.context_pad)
        self.square = wp.crop_mode == "square"
        if wp.crop_mode not in ("warp", "square"):
            raise UserError(
                f"{self.what}: crop_mode '{wp.crop_mode}' is not 'warp' or 'square'",
            )
        self.fg_fraction = float(wp.fg_fraction)
        self.images: dict[int, Path] = {}
        self.cache: dict[int, bytes] | None = {} if wp.cache_images else None
        self.fg: list[tuple[int, int, int, int, int, int]] = []  # (image, label, x1, y1, x2, y2)
        self.bg: list[tuple[int, int, int, int, int, int]] = []
        self._parse(found, wp, _resolver(self.net_dir, found.parent))
        want = self.shapes[self.tops[0]][1:]
        if want != (3, self.crop, self.crop):
            raise UserError(
                f"{self.what}: WindowData makes 3x{self.crop}x{self.crop} windows, but the "
                f"net's top '{self.tops[0]}' was compiled as {fmt(self.shapes[self.tops[0]])}",
                hint=f"compile with --shape {self.tops[0]}={self.batch_size},3,{self.crop},"
                f"{self.crop}",
            )
        values = len(self.transform.mean_values)
        if values not in (0, 1, 3):
            raise UserError(
                f"{self.what}: WindowData makes 3-channel windows, but transform_param gives "
                f"{values} mean_value entries",
                hint="give one mean_value, or one per channel",
            )
        mean = self.transform.mean
        if mean is not None and (
            mean.shape[0] != 3 or mean.shape[1] < self.crop or mean.shape[2] < self.crop
        ):
            raise UserError(
                f"{self.what}: the mean file is {fmt(mean.shape)}; WindowData needs a "
                f"3-channel mean of at least the {self.crop}x{self.crop} crop (its centre is used)",
            )
        num_fg = self._num_fg()
        for kind, windows, count in (
            ("background", self.bg, self.batch_size - num_fg),
            ("foreground", self.fg, num_fg),
        ):
            if count and not windows:
                raise UserError(
                    f"{self.what}: the window file {found} has no {kind} windows to sample",
                    hint="check fg_threshold, bg_threshold and fg_fraction",
                )

    def _num_fg(self) -> int:
        return int(np.float32(self.batch_size) * np.float32(self.fg_fraction))

    def _parse(self, path: Path, wp: Any, resolve: Callable[[str], Path | None]) -> None:
        tokens: list[tuple[str, int]] = []
        for number, line in enumerate(_read_list(path, self.layer, "window file"), 1):
            tokens += [(token, number) for token in line.split()]
        if not tokens:
            raise UserError(f"{self.what}: the window file {path} is empty")
        position = 0

        def take(kind: type, what: str) -> Any:
            nonlocal position
            if position >= len(tokens):
                raise UserError(f"{self.what}: {path} ends where {what} should be")
            token, number = tokens[position]
            position += 1
            try:
                return kind(token)
            except ValueError:
                raise UserError(
                    f"{self.what}: line {number} of {path}: expected {what}, found '{token}'",
                    hint="window files hold '# index', the image path, channels, height, "
                    "width, the number of windows, then 'label overlap x1 y1 x2 y2' lines",
                ) from None

        while position < len(tokens):
            token, number = tokens[position]
            if token != "#":
                raise UserError(
                    f"{self.what}: line {number} of {path}: expected '#' starting an image, "
                    f"found '{token}'",
                )
            position += 1
            index = take(int, "an image index")
            name = wp.root_folder + take(str, "an image path")
            image_path = resolve(name)
            if image_path is None:
                raise UserError(
                    f"{self.what}: line {number} of {path}: the image '{name}' does not exist",
                    hint=f"check the window file and root_folder; {_LOOKUP_HINT}",
                )
            self.images[index] = image_path
            if self.cache is not None:
                self.cache[index] = image_path.read_bytes()
            for what in ("the channels", "the height", "the width"):
                take(int, what)
            for _ in range(take(int, "the number of windows")):
                label = take(int, "a window's label")
                overlap = take(float, "a window's overlap")
                box = [take(int, f"a window's {c}") for c in ("x1", "y1", "x2", "y2")]
                if overlap >= wp.fg_threshold:
                    if label <= 0:
                        raise UserError(
                            f"{self.what}: {path}: a foreground window of image {index} has "
                            f"label {label}; labels of objects start at 1 (0 is background)",
                        )
                    self.fg.append((index, label, *box))
                elif overlap < wp.bg_threshold:
                    self.bg.append((index, 0, *box))

    def _load(self, index: int, where: str) -> np.ndarray:
        if self.cache is not None:
            return decode_image(self.cache[index], "color", where)
        return read_image(self.images[index], "color", where)

    def _window(self, window: tuple[int, ...], out: np.ndarray) -> None:
        index, _, x1, y1, x2, y2 = window
        where = f"{self.what}: image {index} of {self.window_file}"
        do_mirror = self.transform.mirror and bool(self.rng.integers(2))
        image = self._load(index, where)
        _, rows, cols = image.shape
        crop = self.crop
        f = np.float32
        out_h = out_w = crop
        pad_h = pad_w = 0
        if self.context_pad > 0 or self.square:
            context_scale = f(crop) / f(crop - 2 * self.context_pad)
            half_h, half_w = f(y2 - y1 + 1) / f(2), f(x2 - x1 + 1) / f(2)
            center_x, center_y = f(x1) + half_w, f(y1) + half_h
            if self.square:
                half_h = half_w = max(half_h, half_w)
            x1 = _c_round(center_x - half_w * context_scale)
            x2 = _c_round(center_x + half_w * context_scale)
            y1 = _c_round(center_y - half_h * context_scale)
            y2 = _c_round(center_y + half_h * context_scale)
            unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
            pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
            pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
            x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
            scale_x, scale_y = f(crop) / f(unclipped_w), f(crop) / f(unclipped_h)
            out_w = _c_round(f(x2 - x1 + 1) * scale_x)
            out_h = _c_round(f(y2 - y1 + 1) * scale_y)
            pad_x1, pad_x2 = _c_round(f(pad_x1) * scale_x), _c_round(f(pad_x2) * scale_x)
            pad_h = _c_round(f(pad_y1) * scale_y)
            pad_w = pad_x2 if do_mirror else pad_x1
            out_h = min(out_h, crop - pad_h)
            out_w = min(out_w, crop - pad_w)
        if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows) or out_h <= 0 or out_w <= 0:
            raise UserError(
                f"{where}: the window ({x1}, {y1}, {x2}, {y2}) lies outside the "
                f"{cols}x{rows} image",
                hint="window corners are 0-based pixel coordinates inside the image",
            )
        warped = resize_bilinear(image[:, y1 : y2 + 1, x1 : x2 + 1], out_h, out_w)
        if do_mirror:
            warped = warped[:, :, ::-1]
        t = self.transform
        x = warped.astype(self.dtype)
        if t.mean is not None:
            off = (t.mean.shape[2] - crop) // 2
            x -= t.mean[:, off + pad_h : off + pad_h + out_h, off + pad_w : off + pad_w + out_w]
        elif len(t.mean_values) == 1:
            x -= t.mean_values[0]
        elif len(t.mean_values):
            x -= t.mean_values[:, None, None]
        out[...] = 0
        out[:, pad_h : pad_h + out_h, pad_w : pad_w + out_w] = x * t.scale

    def batch(self) -> Batch:
        out = self.new_batch()
        data = out[self.tops[0]]
        labels = np.empty(self.batch_size, dtype=self.dtype)
        num_fg = self._num_fg()
        item = 0
        for windows, count in ((self.bg, self.batch_size - num_fg), (self.fg, num_fg)):
            for _ in range(count):
                window = windows[int(self.rng.integers(len(windows)))]
                self._window(window, data[item])
                labels[item] = window[1]
                item += 1
        if len(self.tops) > 1:
            out[self.tops[1]] = labels.reshape(self.shapes[self.tops[1]])
        return out


_SOURCES: dict[str, type[_Source]] = {
    "Data": _DataSource,
    "ImageData": _ImageDataSource,
    "HDF5Data": _HDF5Source,
    "WindowData": _WindowDataSource,
}


# --------------------------------------------------------------------------- the feeder


_JOIN_SECONDS = 30.0  # how long close() waits for a batch being made to finish


class _Failure:
    """An exception raised on the prefetch thread, carried to :meth:`Feeder.next`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _produce(source: _Source, batches: queue.Queue, stop: threading.Event) -> None:
    """The prefetch thread: batches into the queue until stopped or failed."""
    try:
        while not stop.is_set():
            item: Any = source.batch()
            while not stop.is_set():
                try:
                    batches.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
    except BaseException as error:  # noqa: BLE001 - handed to the consumer as it was
        item = _Failure(error)
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.05)
                break
            except queue.Full:
                continue


def _shutdown(
    source: _Source, thread: threading.Thread | None, stop: threading.Event, batches: queue.Queue
) -> None:
    stop.set()
    if thread is not None:
        deadline = time.monotonic() + _JOIN_SECONDS
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                while True:
                    batches.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)
        if thread.is_alive():
            return  # stuck in a read: leave the source to the daemon thread, never close under it
    source.close()


class Feeder:
    """One data layer's batches, prepared ahead on a thread.

    :meth:`next` returns ``{top: array}`` with every top's compiled shape and
    the net's dtype; each call returns new arrays. An error met while
    preparing a batch is raised by the :meth:`next` that would have returned
    it, as it was raised (a UserError stays a UserError). :meth:`close` stops
    the thread and closes the source; a Feeder is also a context manager.
    """

    def __init__(self, source: _Source, prefetch: int) -> None:
        self.layer = source.layer
        self.tops = list(source.tops)
        self.shapes = dict(source.shapes)
        self.waited = 0.0  # seconds next() spent waiting for the thread
        self._source = source
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False
        if prefetch > 0:
            self._thread = threading.Thread(
                target=_produce,
                args=(source, self._queue, self._stop),
                name=f"caffec-data-{source.layer}",
                daemon=True,
            )
            self._thread.start()
        self._finalizer = weakref.finalize(
            self, _shutdown, source, self._thread, self._stop, self._queue
        )

    @property
    def prefetching(self) -> bool:
        """Whether the prefetch thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def next(self) -> Batch:
        """The next batch: ``{top: array of the top's shape}``."""
        if self._closed:
            raise UserError(f"layer '{self.layer}': its data feeder was closed")
        if self._error is not None:
            raise self._error
        if self._thread is None:
            try:
                return self._source.batch()
            except BaseException as error:
                self._error = error
                raise
        start = time.perf_counter()
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise InternalError(
                        f"layer '{self.layer}': the data thread stopped without a reason"
                    ) from None
        self.waited += time.perf_counter() - start
        if isinstance(item, _Failure):
            self._error = item.error
            raise item.error
        return item

    __next__ = next

    def __iter__(self) -> Feeder:
        return self

    def close(self) -> None:
        """Stop the prefetch thread and close the source (safe to call twice)."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Feeder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _layer_param(spec: Mapping[str, Any]) -> caffe_pb2.LayerParameter:
    param = spec.get("param", {})
    if isinstance(param, caffe_pb2.LayerParameter):
        return param
    try:
        return json_format.ParseDict(param, caffe_pb2.LayerParameter())
    except json_format.ParseError as err:
        raise InternalError(
            f"layer '{spec.get('layer')}': the manifest's data layer parameters do not parse: {err}"
        ) from None


def make_feeder(
    spec: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    dtype: Any,
    phase: str,
    net_dir: str | Path,
    seed: int,
    *,
    prefetch: int | None = None,
) -> Feeder:
    """A :class:`Feeder` for one ``feeders`` entry of a manifest.

    ``spec`` is ``{"layer", "type", "tops", "param"}`` (``param``: the
    LayerParameter as a JSON dict, or a ``caffe_pb2.LayerParameter``);
    ``shapes`` gives each top's compiled shape (the batch size is the first
    top's first dimension); ``phase`` is ``"TRAIN"`` or ``"TEST"`` (random
    crops in TRAIN, centred in TEST); ``seed`` seeds every random choice
    (mixed with the layer's name, so two data layers differ). ``prefetch``
    overrides ``data_param.prefetch`` (0: no thread, batches are made in
    :meth:`Feeder.next`). The source is opened and its first record checked
    here, so a missing or ill-fitting source fails now.
    """
    layer = str(spec.get("layer", ""))
    kind = spec.get("type")
    source_type = _SOURCES.get(str(kind))
    if source_type is None:
        raise UserError(
            f"layer '{layer}': caffec cannot read the sources of {kind} layers",
            hint="feed the net's inputs yourself (net.forward(data=...))",
        )
    tops = list(spec.get("tops") or [])
    missing = [t for t in tops if t not in shapes]
    if not tops or missing:
        raise InternalError(f"layer '{layer}': no shape for the tops {missing or tops}")
    param = _layer_param(spec)
    phase_name = {"0": "TRAIN", "1": "TEST"}.get(str(phase), str(phase).upper())
    if phase_name not in ("TRAIN", "TEST"):
        raise InternalError(f"unknown phase {phase!r}")
    seeds = np.random.SeedSequence([int(seed) % (1 << 64), zlib.crc32(layer.encode("utf-8"))])
    rngs = [np.random.default_rng(s) for s in seeds.spawn(2)]  # order, transform
    net_dir = Path(net_dir) if net_dir else None
    source = source_type(
        param,
        _resolver(net_dir),
        rngs,
        layer=layer,
        tops=tops,
        shapes=shapes,
        dtype=np.dtype(dtype),
        phase=phase_name,
        net_dir=net_dir,
    )
    depth = int(param.data_param.prefetch) if prefetch is None else int(prefetch)
    return Feeder(source, max(depth, 0))
