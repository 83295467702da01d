"""What the two targets' kernel graphs compute: the CUDA target's, checked on the CPU against
the C target's.

One small training net that uses every primitive (im2col and GEMM, col2im, direct
depthwise convolution, implicit GEMMs, with groups too, MAX/AVE pooling and their
gradients, LRN's pooled squares, copies, reductions, random maps, the solver's updates) is
lowered for each target, which choose their own algorithms at -O2 (the C target packs
the wide convolution's weights ahead and runs the "dense" one's forward directly; the CUDA
target runs them as implicit GEMMs). The CUDA artifact is run by the runtime's device
executor on the OpenMP emulation of ``tests/cuda_emulator.py`` (and, marked ``gpu``, on
a real GPU), and two SGD steps must give the C target's outputs, gradients and weights.
Built at -O0 (one kernel
per primitive, pooling masks) and -O2 (fused kernels as their parts, the argmax found again
in backward), and at -O2 with every layout of the CUDA GEMM's blocks (the "many" and "few"
convolutions give it more than 64 rows, plain and transposed) and reductions by blocks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from nets import same_params, train_step
from test_fusion_equivalence import SOLVER

from caffec.codegen import cuda as cuda_codegen
from caffec.codegen.artifact_writer import write_artifact
from caffec.compiler.pipeline import (
    Options,
    build_kernel_graph,
    layer_graph_of,
)
from caffec.compiler.targets.cpu import CpuTarget
from caffec.compiler.targets.cuda import CudaTarget
from caffec.frontend.loader import parse_net
from caffec.runtime.compiled_net import CompiledNet

NET = """
name: "every_primitive"
layer { name: "in" type: "Input" top: "data" top: "label" top: "wide" top: "rows"
        input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } shape { dim: 2 }
                      shape { dim: 2 dim: 128 dim: 5 dim: 5 }
                      shape { dim: 2 dim: 16 dim: 3 dim: 16 } } }
layer { name: "wide_conv" type: "Convolution" bottom: "wide" top: "wide_conv"
        convolution_param { num_output: 5 kernel_size: 3 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "wide_ip" type: "InnerProduct" bottom: "wide_conv" top: "wide_ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "dense" type: "Convolution" bottom: "rows" top: "dense"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "dense_ip" type: "InnerProduct" bottom: "dense" top: "dense_ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "grouped" type: "Convolution" bottom: "rows" top: "grouped"
        convolution_param { num_output: 4 group: 2 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "grouped_ip" type: "InnerProduct" bottom: "grouped" top: "grouped_ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "many" type: "Convolution" bottom: "data" top: "many"
        convolution_param { num_output: 72 kernel_size: 3 stride: 2 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "few" type: "Convolution" bottom: "many" top: "few"
        convolution_param { num_output: 3 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "few_ip" type: "InnerProduct" bottom: "few" top: "few_ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 4 group: 4 kernel_size: 2 stride: 1 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool2" type: "Pooling" bottom: "norm1" top: "pool2"
        pooling_param { pool: AVE kernel_size: 2 stride: 1 pad: 1 } }
layer { name: "cat" type: "Concat" bottom: "conv2" bottom: "pool2" top: "cat" }
layer { name: "bn" type: "BatchNorm" bottom: "cat" top: "cat" }
layer { name: "scale" type: "Scale" bottom: "cat" top: "cat" scale_param { bias_term: true } }
layer { name: "up" type: "Deconvolution" bottom: "cat" top: "up"
        convolution_param { num_output: 2 kernel_size: 2 stride: 2
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "drop" type: "Dropout" bottom: "up" top: "up" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip" type: "InnerProduct" bottom: "up" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "sum" type: "Eltwise" bottom: "ip" bottom: "wide_ip" bottom: "dense_ip"
        bottom: "grouped_ip" top: "sum" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss" }
layer { name: "few_loss" type: "SoftmaxWithLoss" bottom: "few_ip" bottom: "label" top: "few_loss" }
"""


LAYOUTS = [(2, 1), (4, 1), (1, 4)]  # (reach, slices): see cuda.gemm_layout


def test_the_gpu_layouts_follow_the_grid_size() -> None:
    """GoogLeNet's shapes at batch 32: a large C gets 64x64 tiles, smaller ones 32x32 or
    16x16 (a block per multiprocessor at least), a weight gradient (small C, long K) slices
    of K; bias gradients reduce by blocks."""

    def gemm(m: int, n: int, k: int) -> tuple[int, int]:
        return cuda_codegen.gemm_layout({"M": m, "N": n, "K": k, "batch": 1}, 132)

    assert gemm(192, 3136, 576) == (4, 1)  # conv2/3x3, one image
    assert gemm(64, 3136, 64) == (2, 1)  # conv2/3x3_reduce, one image
    assert gemm(128, 784, 96 * 9) == (1, 1)  # inception_3a/3x3: 392 blocks of 16x16
    assert gemm(64, 147, 12544) == (1, 4)  # conv1's weight gradient, one image
    assert gemm(10, 5, 20) == (1, 1)  # small everything

    def by_block(out_size: int, total: int) -> bool:
        return cuda_codegen.reduce_per_block({"out_size": out_size, "total": total}, 132)

    assert by_block(64, 32 * 64 * 112 * 112)  # conv1's bias gradient
    assert not by_block(1000, 32 * 1000)  # a classifier's, batch 32
    assert by_block(1, 10)  # one output: one block


@pytest.mark.parametrize(("level", "forced"), [(0, False), (2, False), (2, True)])
def test_cuda_kernels_compute_what_the_c_target_does(
    level: int, forced: bool, tmp_path: Path, any_gpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``forced``: each GEMM gets one of ``LAYOUTS`` by its sizes, so every layout meets
    several operands', and every reduction of at most 100 outputs runs a block per output
    (this net is too small for any of that on its own)."""
    if forced:
        monkeypatch.setattr(cuda_codegen, "reduce_per_block", lambda a, _: a["out_size"] <= 100)
        monkeypatch.setattr(cuda_codegen, "gemm_layout",
                            lambda a, multiprocessors, images=1:
                            LAYOUTS[(a["M"] + a["N"] + a["K"]) % 3])  # fmt: skip
    options = Options(phase="TRAIN", backward=True, solver=SOLVER, opt_level=level)
    net, spans = parse_net(NET)
    nets = []
    for target in (CpuTarget(), CudaTarget(archs=(any_gpu.arch,))):
        target_options = replace(options, target=target)
        kgraph = build_kernel_graph(layer_graph_of(net, spans, target_options), target_options)
        nets.append(CompiledNet(write_artifact(kgraph, tmp_path / target.name), seed=3))
    c, cuda = nets
    same_params(c, cuda)
    rng = np.random.default_rng(1)
    feed = {
        "data": rng.standard_normal((2, 3, 9, 9)),
        "label": np.array([1.0, 4.0]),
        "wide": rng.standard_normal((2, 128, 5, 5)),
        "rows": rng.standard_normal((2, 16, 3, 16)),
    }
    for _ in range(2):
        results = []
        for net_ in (c, cuda):
            outputs = train_step(net_, feed, lr=0.05)
            outputs |= {f"{n} {i} diff": b.diff.copy() for n, bs in net_.params.items()
                        for i, b in enumerate(bs)}  # fmt: skip
            outputs |= {f"{n} {i}": b.data.copy() for n, bs in net_.params.items()
                        for i, b in enumerate(bs)}  # fmt: skip
            results.append(outputs)
        for key, value in results[0].items():
            if key == "conv2 1 diff":  # a bias before BatchNorm: zero, but for rounding noise
                assert np.abs(value).max() < 1e-5 and np.abs(results[1][key]).max() < 1e-5
                continue
            atol = max(1e-6, 1e-5 * float(np.max(np.abs(value), initial=0.0)))
            np.testing.assert_allclose(results[1][key], value, rtol=1e-4, atol=atol, err_msg=key)
