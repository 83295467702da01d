"""Cases for MultinomialLogisticLoss, HingeLoss, InfogainLoss and HDF5Output (their numbers
are checked in tests/runtime/test_layers_losses.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from caffec.formats.binaryproto_writer import write_blobproto
from catalog import Case

# Files the cases read and write, in a folder of their own (the case text names them).
FOLDER = Path(tempfile.mkdtemp(prefix="caffec-catalog-losses-"))
INFOGAIN = FOLDER / "infogain.binaryproto"
write_blobproto(INFOGAIN, np.random.default_rng(5).uniform(0, 2, (1, 1, 4, 4)))


def layer(type_: str, bottoms: str, params: str = "") -> str:
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms.split())
    return f'layer {{ name: "x" type: "{type_}" {bottom} top: "loss" {params} }}'


def labels(shape: tuple[int, ...], classes: int, **more: np.ndarray):  # noqa: ANN201 - a Feed
    return lambda rng: {"l": rng.integers(0, classes, shape).astype(float), **more}


def probabilities(rng: np.random.Generator) -> np.ndarray:
    """Rows of a softmax-like output, away from the 1e-20 floor."""
    p = rng.uniform(0.05, 1.0, (4, 5))
    return p / p.sum(axis=1, keepdims=True)


CASES = [
    Case("MultinomialLogisticLoss", layer("MultinomialLogisticLoss", "p l"),
         {"p": (4, 5), "l": (4,)},
         feed=lambda rng: labels((4,), 5)(rng) | {"p": probabilities(rng)}, no_grad=("l",)),
    Case("HingeLoss", layer("HingeLoss", "a l"), {"a": (4, 5), "l": (4,)},
         feed=labels((4,), 5), no_grad=("l",)),
    Case("HingeLoss", layer("HingeLoss", "a l", "hinge_loss_param { norm: L2 }"),
         {"a": (3, 2, 2), "l": (3,)}, feed=labels((3,), 4), no_grad=("l",), id="L2"),
    Case("InfogainLoss", layer("InfogainLoss", "a l H"),
         {"a": (3, 4), "l": (3,), "H": (4, 4)},
         feed=lambda rng: labels((3,), 4)(rng) | {"H": rng.uniform(0, 2, (4, 4))},
         no_grad=("l", "H")),
    Case("InfogainLoss",
         layer("InfogainLoss", "a l", f'infogain_loss_param {{ source: "{INFOGAIN}" axis: 1 }} '
               "loss_param { ignore_label: 2 normalization: FULL }"),
         {"a": (2, 4, 3), "l": (2, 3)}, feed=labels((2, 3), 4), no_grad=("l",),
         id="from a file, spatial, ignore_label"),
    # the layer has no tops: AbsVal gives the case an output to compare
    Case("HDF5Output",
         f'layer {{ name: "x" type: "HDF5Output" bottom: "a" bottom: "l" hdf5_output_param '
         f'{{ file_name: "{FOLDER / "out.h5"}" }} }} '
         'layer { name: "after" type: "AbsVal" bottom: "a" top: "y" }',
         {"a": (2, 3), "l": (2,)}, feed=labels((2,), 3), backward=False, no_grad=("l",)),
]  # fmt: skip
