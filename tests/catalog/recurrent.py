"""Cases for RNN, LSTM and LSTMUnit (tests/runtime/test_layers_recurrent.py checks their
numbers against numpy references).

The continuation markers restart a sequence mid-batch. Without ``expose_hidden`` they are
0 at t = 0, so that the state an earlier forward left (Caffe hands it to the next one)
does not count: the catalog runs forward several times and compares the results.
"""

from __future__ import annotations

import numpy as np

from catalog import Case


def markers(steps: int, streams: int, first: float):  # noqa: ANN201 - a Feed
    """Stream 0 runs one sequence; the others start a new one at t = 2."""
    cont = np.ones((steps, streams))
    cont[0] = first
    cont[2:3, 1:] = 0
    return lambda rng: {"cont": cont}


def recurrent(type_: str, bottoms: str, tops: str, param: str) -> str:
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms.split())
    top = " ".join(f'top: "{t}"' for t in tops.split())
    return f'layer {{ name: "x" type: "{type_}" {bottom} {top} recurrent_param {{ {param} }} }}'


CASES = [
    Case("RNN", recurrent("RNN", "a cont", "y", "num_output: 3"),
         {"a": (3, 2, 4), "cont": (3, 2)}, feed=markers(3, 2, 0.0), no_grad=("cont",)),
    Case("RNN", recurrent("RNN", "a cont s h0", "y hT", "num_output: 2 expose_hidden: true"),
         {"a": (4, 2, 2, 2), "cont": (4, 2), "s": (2, 3), "h0": (1, 2, 2)},
         feed=markers(4, 2, 1.0), no_grad=("cont",), id="static exposed"),
    Case("LSTM", recurrent("LSTM", "a cont", "y", "num_output: 3"),
         {"a": (3, 2, 4), "cont": (3, 2)}, feed=markers(3, 2, 0.0), no_grad=("cont",)),
    Case("LSTM", recurrent("LSTM", "a cont s", "y", "num_output: 2"),
         {"a": (4, 3, 3), "cont": (4, 3), "s": (3, 2, 2)}, feed=markers(4, 3, 0.0),
         no_grad=("cont",), id="static"),
    Case("LSTM", recurrent("LSTM", "a cont h0 c0", "y hT cT",
                           "num_output: 3 expose_hidden: true"),
         {"a": (3, 2, 2), "cont": (3, 2), "h0": (1, 2, 3), "c0": (1, 2, 3)},
         feed=markers(3, 2, 1.0), no_grad=("cont",), id="exposed"),
    Case("LSTMUnit", 'layer { name: "x" type: "LSTMUnit" bottom: "c" bottom: "g" '
                     'bottom: "cont" top: "cn" top: "hn" }',
         {"c": (1, 3, 2), "g": (1, 3, 8), "cont": (1, 3)},
         feed=lambda rng: {"cont": np.array([[1.0, 0.0, 1.0]])}, no_grad=("cont",)),
]  # fmt: skip
