"""The sources of Caffe's data layers: each makes one batch after another, as the layer would.

- **Data**: LMDB or LevelDB databases of ``Datum`` records (raw uint8
  ``data``, ``float_data``, or ``encoded`` JPEG/PNG), read in key order and
  wrapping around at the end; labels from ``Datum.label``.
- **ImageData**: a list file of ``path label`` lines (``root_folder``
  prepended), optionally resized to ``new_height`` x ``new_width``, colour or
  gray, optionally shuffled (again at every pass, as Caffe does).
- **HDF5Data**: a list file of .h5 files, one dataset per top; optionally
  shuffled (the files' order and each file's rows, again at every pass).
- **WindowData** (:mod:`caffec.runtime.window_data`): R-CNN's window file.

Data, ImageData and WindowData go through Caffe's TransformationParameter
(:mod:`caffec.runtime.transform`); HDF5Data is not transformed, as in Caffe.
Colour images come out in OpenCV's BGR channel order, as Caffe trains on them.
Everything random comes from the layer's :class:`~caffec.runtime.random_seed.LayerRandom`:
shuffles and rand_skip in sequence, crops, flips and window sampling from each batch's own
generator, so that resuming seeks instead of making the batches it skips. Each batch says
where its items came from (:class:`Batch`), for messages about one item. Relative paths are
looked up from the working directory, as Caffe does, then from the prototxt's
folder; paths inside list files also from the list file's own folder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from caffec.errors import UserError, shape_text
from caffec.formats import caffe_pb2
from caffec.formats.databases import Cursor, key_text
from caffec.formats.datum import datum_array, parse_datum
from caffec.formats.hdf5_list import open_listed
from caffec.formats.images import read_image, resize_bilinear
from caffec.formats.lists import parse_image_list, read_lines
from caffec.formats.optional import optional_module
from caffec.runtime.random_seed import LayerRandom
from caffec.runtime.transform import Transformer

Shape = tuple[int, ...]


class Batch(dict[str, np.ndarray]):
    """One batch, ``{top: array}``; ``origins`` names where each item was read from (a
    database's record, a list file's ``file:line``, an HDF5 file's row), so that an error
    about one item (a label out of range) can name it."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        super().__init__(arrays)
        self.origins: list[str] = []


LOOKUP_HINT = (
    "relative paths are looked up from the working directory (as Caffe does), "
    "then from the prototxt's folder"
)


def resolver(*folders: Path | None) -> Callable[[str], Path | None]:
    """Find a path as given (relative to the working directory), then in ``folders``."""

    def resolve(name: str) -> Path | None:
        if not name:
            return None
        candidates = [Path(name)]
        if not Path(name).is_absolute():
            candidates += [Path(f) / name for f in folders if f is not None]
        return next((c for c in candidates if c.exists()), None)

    return resolve


def effective_transform(p: Any, old: Any) -> caffe_pb2.TransformationParameter:
    """transform_param, with the deprecated copies in the layer's own message filling gaps."""
    t = caffe_pb2.TransformationParameter()
    t.CopyFrom(p.transform_param)
    for name in ("scale", "mean_file", "crop_size", "mirror"):
        if old is not None and not t.HasField(name) and old.HasField(name):
            setattr(t, name, getattr(old, name))
    return t


class Source:
    """Makes batches one after the other; used by one thread at a time."""

    def find(self, resolve: Callable, source: str, what: str, field: str) -> Path:
        """The layer's source file, or a UserError naming the layer, the file and the field."""
        found = resolve(source)
        if found is None:
            raise UserError(
                f"layer '{self.layer}': {what} '{source}' does not exist",
                hint=f"check {field}; {LOOKUP_HINT}",
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
        random: LayerRandom,
    ) -> None:
        self.layer = layer
        self.tops = tops
        self.shapes = {t: tuple(int(d) for d in shapes[t]) for t in tops}
        self.dtype = dtype
        self.phase = phase
        self.net_dir = net_dir
        self.batch_size = self.shapes[tops[0]][0] if self.shapes[tops[0]] else 1
        self.random = random
        self.made = 0  # the index of the next batch

    def new_batch(self) -> Batch:
        return Batch({t: np.empty(self.shapes[t], dtype=self.dtype) for t in self.tops})

    def check_image(self, transform: Transformer, chw: Shape, where: str, hint: str) -> None:
        """Refuse an image whose transformed shape is not the data top's compiled shape."""
        transform.check(chw, where)
        top = self.tops[0]
        want = self.shapes[top][1:]
        got = transform.out_shape(chw)
        if got != want:
            after = f" ({shape_text(got)} after the crop)" if got != chw else ""
            suggestion = ",".join(str(d) for d in (self.batch_size, *got))
            raise UserError(
                f"{where} is {shape_text(chw)}{after}, but the net's top '{top}' was compiled "
                f"as {shape_text(self.shapes[top])}",
                hint=f"compile with --shape {top}={suggestion} to fit the data, or change the "
                f"data{hint}",
            )

    def check_label_top(self) -> None:
        if len(self.tops) > 1:
            label = self.tops[1]
            if int(np.prod(self.shapes[label])) != self.batch_size:
                raise UserError(
                    f"layer '{self.layer}': the label top '{label}' was compiled as "
                    f"{shape_text(self.shapes[label])}; it takes one label per item of a batch of "
                    f"{self.batch_size}",
                    hint=f"compile with --shape {label}={self.batch_size}",
                )

    def batch(self) -> Batch:
        """The next batch, its random numbers drawn from its own generator."""
        rng = self.random.batch(self.made)
        self.made += 1
        return self.make(rng)

    def make(self, rng: np.random.Generator) -> Batch:
        """Read and transform the next batch, drawing from ``rng`` per item."""
        raise NotImplementedError

    def skip(self, batches: int) -> None:
        """Stand ``batches`` batches further on, as making them would (resuming training),
        without making them: each batch draws from its own generator, so only where reading
        stands moves."""
        self.made += batches
        self.seek(batches * self.batch_size)

    def seek(self, items: int) -> None:
        """Move where reading stands ``items`` items on, as reading them would."""
        raise NotImplementedError

    def shard(self, rank: int, count: int) -> None:
        """Read as data-parallel rank ``rank`` of ``count`` (training): here every rank reads
        the whole source, as Caffe's ImageData, HDF5Data and WindowData layers do."""

    def close(self) -> None:
        pass


class DataSource(Source):
    """Caffe's Data layer."""

    def __init__(self, p: caffe_pb2.LayerParameter, resolve: Callable, **kw: Any):
        super().__init__(**kw)
        dp = p.data_param
        self.check_label_top()
        backend = caffe_pb2.DataParameter.DB.Name(dp.backend)
        found = self.find(resolve, dp.source, "the database", "data_param.source (and backend)")
        self.name = dp.source
        self.transform = Transformer(
            effective_transform(p, dp),
            self.phase,
            self.dtype,
            resolve,
            f"layer '{self.layer}'",
        )
        force = self.transform.force
        self.mode = force if force is not None else ("color" if dp.force_encoded_color else None)
        self.cursor = Cursor(found, backend)
        self.stride = 1  # records on from one read to the next: the data-parallel ranks
        self.checked: Shape | None = None
        try:
            if self.cursor.empty:
                raise UserError(
                    f"layer '{self.layer}': the database {found} is empty",
                    hint="convert some data into it (convert_mnist, convert_imageset)",
                )
            key, value = self.cursor.peek()
            self._image(self._record(key), value)  # check the first record now, as Caffe's setup
            if dp.rand_skip:
                self.cursor.skip(int(self.random.order.integers(dp.rand_skip)))
        except BaseException:
            self.cursor.close()
            raise

    def _record(self, key: bytes) -> str:
        return f"record '{key_text(key)}' of {self.name}"

    def _image(self, record: str, value: bytes) -> tuple[np.ndarray, int]:
        where = f"layer '{self.layer}': {record}"
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

    def make(self, rng: np.random.Generator) -> Batch:
        out = self.new_batch()
        data = out[self.tops[0]]
        labels = np.empty(self.batch_size, dtype=self.dtype)
        for i in range(self.batch_size):
            key, value = self.cursor.next()
            if self.stride > 1:
                self.cursor.skip(self.stride - 1)  # the other ranks' records
            out.origins.append(self._record(key))
            image, labels[i] = self._image(out.origins[-1], value)
            self.transform(image, rng, data[i])
        if len(self.tops) > 1:
            out[self.tops[1]] = labels.reshape(self.shapes[self.tops[1]])
        return out

    def seek(self, items: int) -> None:
        """Records are read in key order, round and round."""
        self.cursor.skip(items * self.stride)

    def shard(self, rank: int, count: int) -> None:
        """Caffe's DataLayer::Skip: of the records in key order (round and round), rank r of N
        reads the r-th, (r + N)-th, ...; so the ranks' batches together hold the records one
        process's batch N times larger would, and no two ranks read the same one in an epoch."""
        self.stride = count
        self.cursor.skip(rank)

    def close(self) -> None:
        self.cursor.close()


class ImageDataSource(Source):
    """Caffe's ImageData layer."""

    def __init__(self, p: caffe_pb2.LayerParameter, resolve: Callable, **kw: Any):
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
        self.resolve = resolver(self.net_dir, found.parent)
        self.resolved: dict[int, Path] = {}
        self.shuffle = ip.shuffle
        self.rng = self.random.order
        self.transform = Transformer(
            effective_transform(p, ip),
            self.phase,
            self.dtype,
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

    def seek(self, items: int) -> None:
        """A seek in the list; with shuffle, the order of each pass begun on the way is drawn
        as reading would draw it."""
        wraps, self.position = divmod(self.position + items, len(self.lines))
        if self.shuffle and wraps:
            order = np.arange(len(self.lines))
            for _ in range(wraps):  # the orders composed; the lines moved once
                order = order[self.rng.permutation(len(self.lines))]
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
                    hint=f"check the list and image_data_param.root_folder; {LOOKUP_HINT}",
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

    def make(self, rng: np.random.Generator) -> Batch:
        out = self.new_batch()
        data = out[self.tops[0]]
        labels = np.empty(self.batch_size, dtype=self.dtype)
        for i in range(self.batch_size):
            self.transform(self._image(self.position), rng, data[i])
            _, labels[i], number = self.lines[self.position]
            out.origins.append(f"{self.list_file}:{number}")
            self.position += 1
            if self.position >= len(self.lines):
                self.position = 0
                if self.shuffle:
                    self._shuffle()
        if len(self.tops) > 1:
            out[self.tops[1]] = labels.reshape(self.shapes[self.tops[1]])
        return out


class HDF5Source(Source):
    """Caffe's HDF5Data layer: no transformation, one dataset per top."""

    def __init__(self, p: caffe_pb2.LayerParameter, resolve: Callable, **kw: Any):
        super().__init__(**kw)
        hp = p.hdf5_data_param
        self.h5py = optional_module("h5py", "h5py")
        found = self.find(resolve, hp.source, "the HDF5 list file", "hdf5_data_param.source")
        self.list_file = found
        resolve_entry = resolver(self.net_dir, found.parent)
        self.files: list[tuple[Path, str]] = []  # each file and the line that names it
        for number, line in enumerate(read_lines(found, self.layer, "HDF5 list file"), 1):
            named_on = f"layer '{self.layer}': line {number} of {found}"
            for name in line.split():  # Caffe reads whitespace-separated names
                path = resolve_entry(name)
                if path is None:
                    raise UserError(
                        f"{named_on} names '{name}', which does not exist",
                        hint=f"check the list; {LOOKUP_HINT}, then from the list's folder",
                    )
                self.files.append((path, named_on))
        if not self.files:
            raise UserError(f"layer '{self.layer}': the HDF5 list file {found} names no files")
        self.shuffle = hp.shuffle
        self.rng = self.random.order
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self.current_file = 0
        self._load(*self.files[self.file_order[0]])
        self.current_row = 0

    def _load(self, path: Path, named_on: str) -> None:
        """Read every top's dataset from one file, as Caffe's LoadHDF5FileData."""
        arrays: dict[str, np.ndarray] = {}
        with open_listed(path, named_on) as f:
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
                        f"{dataset.dtype} {shape_text(dataset.shape)}; HDF5Data reads arrays "
                        "of numbers with one row per item",
                    )
                arrays[top] = np.asarray(dataset[()], dtype=self.dtype)
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
                    f"{shape_text(row)}, but the net's top '{top}' was compiled as "
                    f"{shape_text(want)}",
                    hint=f"compile with --shape {top}={suggestion} to fit the data, or change "
                    "the data",
                )
            arrays[top] = array.reshape((array.shape[0], *want[1:]))
        self.arrays = arrays
        self.path = path
        self.rows = next(iter(rows.values()))
        self.row_order = np.arange(self.rows)
        if self.shuffle:
            self.rng.shuffle(self.row_order)

    def _rows_in(self, listed: tuple[Path, str]) -> int:
        """The rows of a listed file's first top, from its metadata (0 where it has none)."""
        with open_listed(*listed) as f:
            top = f.get(self.tops[0])
            return int(top.shape[0]) if isinstance(top, self.h5py.Dataset) and top.ndim else 0

    def seek(self, items: int) -> None:
        """Files passed over are only asked their number of rows, and every shuffle reading
        would draw is drawn."""
        if len(self.files) == 1:
            wraps, self.current_row = divmod(self.current_row + items, self.rows)
            for _ in range(wraps if self.shuffle else 0):
                self.rng.shuffle(self.row_order)
            return
        if not self.shuffle:  # reading repeats after every row of every file
            items %= sum(self._rows_in(listed) for listed in self.files)
        while items >= self.rows - self.current_row:  # into the next file, as _next_row goes
            items -= self.rows - self.current_row
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    self.rng.shuffle(self.file_order)
            listed = self.files[self.file_order[self.current_file]]
            rows = self._rows_in(listed)
            if items < rows or not rows:  # reading stops in it (or _load says what is wrong)
                self._load(*listed)
            else:  # passed over: only the shuffle _load draws
                self.rows, self.row_order = rows, np.arange(rows)
                if self.shuffle:
                    self.rng.shuffle(self.row_order)
            self.current_row = 0
            if self.shuffle:
                self.rng.shuffle(self.row_order)
        self.current_row += items

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
                self._load(*self.files[self.file_order[self.current_file]])
            self.current_row = 0
            if self.shuffle:
                self.rng.shuffle(self.row_order)

    def make(self, rng: np.random.Generator) -> Batch:
        """Rows as they are (``rng`` is not drawn from: HDF5Data does not transform)."""
        out = self.new_batch()
        for i in range(self.batch_size):
            row = self.row_order[self.current_row]
            for top in self.tops:
                out[top][i] = self.arrays[top][row]
            out.origins.append(f"row {row} of {self.path}")
            self._next_row()
        return out
