"""Reading trained weights in any Caffe format (the runtime uses this: no lark here)."""

from __future__ import annotations

from pathlib import Path

from caffec.formats.binaryproto import CaffeModel, read_caffemodel
from caffec.formats.upgrade import upgrade_net


def read_weights(path: str | Path) -> CaffeModel:
    """A caffemodel in any Caffe format, its net upgraded to the current one.

    Blobs stay attached to their layers by name, which is how Caffe matches
    trained layers to a net (upgrading may drop V0 padding layers).
    """
    model = read_caffemodel(path)
    if model.format == "current":
        return model
    by_name = model.blobs_by_name()
    net, _ = upgrade_net(model.net)
    blobs = [by_name.get(layer.name, []) for layer in net.layer]
    return CaffeModel(net=net, blobs=blobs, format="current")
