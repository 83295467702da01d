"""Cases for Convolution and Deconvolution: one bottom, several bottoms (a repeated one
too), 3-D, 1-D, none, a channel axis other than 1 and the forced N-D path;
``tests/runtime/test_conv_nd.py`` checks their numbers against numpy."""

from __future__ import annotations

from catalog import Case


def layer(type_: str, params: str, bottoms: tuple[str, ...] = ("a",)) -> str:
    """Layer "x" of ``type_`` from ``bottoms`` to one top each (y0, y1, ...)."""
    wiring = " ".join(f'bottom: "{b}"' for b in bottoms)
    wiring += " " + " ".join(f'top: "y{i}"' for i in range(len(bottoms)))
    fillers = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" }'
    return (f'layer {{ name: "x" type: "{type_}" {wiring} '
            f"convolution_param {{ {params} {fillers} }} }}")  # fmt: skip


IMAGE = {"a": (2, 4, 5, 6)}
TWO = {"a": (2, 3, 5, 5), "b": (2, 3, 5, 5)}
VOLUME = {"a": (2, 2, 4, 5, 3)}
CONV_3D = (
    "num_output: 4 kernel_size: 3 kernel_size: 2 kernel_size: 2 pad: 1 "
    "stride: 2 stride: 1 stride: 1"
)

CASES = [
    Case("Convolution", layer("Convolution", "num_output: 6 kernel_size: 3 pad: 1 group: 2"),
         IMAGE, id="grouped"),
    Case("Convolution", layer("Convolution", "num_output: 4 kernel_size: 3 stride: 2",
                              ("a", "b")), TWO, id="two bottoms"),
    Case("Convolution", layer("Convolution", "num_output: 3 kernel_size: 3 pad: 1 group: 3",
                              ("a", "a")), {"a": TWO["a"]}, id="repeated bottom depthwise"),
    Case("Convolution", layer("Convolution", CONV_3D, ("a", "b")),
         {"a": VOLUME["a"], "b": VOLUME["a"]}, id="3-D two bottoms"),
    Case("Convolution", layer("Convolution", "num_output: 3 kernel_size: 3 dilation: 2 "
                              "pad: 2"), {"a": (2, 3, 9)}, id="1-D"),
    Case("Convolution", layer("Convolution", "num_output: 4 group: 2"), {"a": (3, 6)},
         id="no spatial axes"),
    Case("Convolution", layer("Convolution", "num_output: 2 kernel_size: 2 axis: 2"),
         {"a": (2, 3, 2, 4, 4)}, id="axis 2"),
    Case("Convolution", layer("Convolution", "num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 "
                              "stride_w: 1 pad_w: 1 pad_h: 0 force_nd_im2col: true"), IMAGE,
         id="forced N-D"),
    Case("Deconvolution", layer("Deconvolution", "num_output: 4 kernel_size: 3 stride: 2 "
                                "pad: 1 group: 2"), IMAGE, id="grouped"),
    Case("Deconvolution", layer("Deconvolution", "num_output: 2 kernel_size: 2 stride: 2",
                                ("a", "b", "a")), TWO, id="three bottoms"),
    Case("Deconvolution", layer("Deconvolution", "num_output: 3 kernel_size: 2 "
                                "kernel_size: 3 kernel_size: 2 stride: 2 stride: 1 stride: 1 "
                                "pad: 0 pad: 1 pad: 0 dilation: 1 dilation: 1 dilation: 2"),
         VOLUME, id="3-D"),
]  # fmt: skip
