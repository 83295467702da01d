"""Looking into a data layer's source for the shape of what it will produce.

Caffe learns a data layer's top shape by reading the first record of its
source. caffec does the same so that nets shape-infer without flags when the
data is there. Sources are opened read-only; the optional libraries (lmdb,
plyvel, h5py, Pillow: the ``data`` extra) are imported only when needed.
"""

from __future__ import annotations

from pathlib import Path

from caffec.errors import UserError
from caffec.formats import caffe_pb2
from caffec.formats.databases import first_record
from caffec.formats.datum import parse_datum
from caffec.formats.hdf5_list import open_listed
from caffec.formats.optional import optional_module

Shape = tuple[int, ...]


def resolve(source: str, base_dir: Path) -> Path | None:
    """Caffe opens sources relative to the working directory; also try the prototxt's."""
    for candidate in (Path(source), base_dir / source):
        if candidate.exists():
            return candidate
    return None


def first_datum(path: Path, backend: str) -> caffe_pb2.Datum:
    """The first record of an LMDB or LevelDB database, as a Datum.

    The database is opened through the process's shared handle: a process may
    already be reading it (a net being rebuilt), and LMDB allows one open.
    """
    item = first_record(path, backend)
    if item is None:
        raise UserError(f"the database {path} is empty")
    return parse_datum(item[1], f"record {item[0]!r} of {path}")


def datum_shape(datum: caffe_pb2.Datum) -> Shape:
    """(channels, height, width) of a Datum, decoding it if it holds an encoded image."""
    if datum.encoded:
        import io

        image = optional_module("PIL.Image", "Pillow").open(io.BytesIO(datum.data))
        return (len(image.getbands()), image.height, image.width)
    return (datum.channels, datum.height, datum.width)


def image_shape(path: Path, is_color: bool) -> Shape:
    """(channels, height, width) of an image file as ImageData would load it."""
    image_module = optional_module("PIL.Image", "Pillow")
    try:
        with image_module.open(path) as image:
            return (3 if is_color else 1, image.height, image.width)
    except OSError as err:
        raise UserError(f"cannot read the image {path}: {err}") from err


def first_listed(list_file: Path) -> str:
    """The first path named in a list file (ImageData's ``path label`` lines, HDF5's paths)."""
    return first_listed_line(list_file)[1]


def first_listed_line(list_file: Path) -> tuple[int, str]:
    """The first path named in a list file, and the number of its line."""
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            return number, line.split()[0]
    raise UserError(f"the list file {list_file} names no files")


def hdf5_shapes(path: Path, names: list[str], named_on: str) -> dict[str, Shape]:
    """The shapes of the named datasets in one HDF5 file, which ``named_on`` (a line of
    a list file) names."""
    with open_listed(path, named_on) as f:
        missing = [n for n in names if n not in f]
        if missing:
            raise UserError(
                f"the HDF5 file {path} has no dataset {missing[0]!r}",
                hint=f"its datasets are: {', '.join(sorted(f.keys()))}",
            )
        return {n: tuple(f[n].shape) for n in names}
