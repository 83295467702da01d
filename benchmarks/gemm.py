"""caffec's generated GEMM against numpy's BLAS (float32), measured in the same run.

Each shape is rendered from caffec's own GEMM template (the kernel a net would get) into a
small library whose entry point runs the kernel `count` times in a C loop, the way a
convolution runs its GEMM once per image inside a per-image loop (a convolution's weights
packed once before the loop, as -O2 does in a net; that packing is timed too); numpy does
the same products as one stacked ``np.matmul`` (one BLAS call per image, from C). Compiling is not
timed. Each side is timed in alternating rounds of some 20 ms, each after a pause (OpenBLAS and
OpenMP threads spin for a while after a call, and would steal the other side's cores) and
a call that wakes its own threads; the best round is kept.

    python benchmarks/gemm.py [--threads N] [--only lenet,square,...] [--rounds 5]

``--threads`` sets OMP_NUM_THREADS and OPENBLAS_NUM_THREADS (default: as the environment
says). The columns are GFLOP/s (2 M N K per product), caffec / numpy, and the plan caffec
chose for the shape (its path, whether threaded, and C' where it computes C transposed).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Shape:
    group: str
    name: str
    m: int
    n: int
    k: int
    trans_a: bool = False
    trans_b: bool = False
    accumulate: bool = False
    count: int = 1  # runs in a per-image loop
    batch: int = 1  # the kernel's own batch (convolution groups)
    step_b: bool = False  # B advances per image (1x1 convolutions read the image itself)
    weights: bool = False  # A is the same for every image: packed once before them, as in a net
    weights_b: bool = False  # B is a layer's weights (an inner product's input gradient)


def conv_forward(group: str, name: str, m: int, k: int, p: int, images: int, g: int = 1,
                 pointwise: bool = False) -> Shape:  # fmt: skip
    """A convolution's forward GEMM per image: W[m x k] cols[k x p], per group."""
    return Shape(group, name, m, p, k, count=images, batch=g, step_b=pointwise, weights=True)


SHAPES = [
    *(Shape("square", f"{s}^3", s, s, s) for s in (256, 512, 1024, 2048)),
    # LeNet, batch 64 (examples/mnist/lenet_train_test.prototxt), forward then backward
    conv_forward("lenet", "conv1", 20, 25, 576, 64),
    conv_forward("lenet", "conv2", 50, 500, 64, 64),
    Shape("lenet", "ip1", 64, 500, 800, trans_b=True),
    Shape("lenet", "ip2", 64, 10, 500, trans_b=True),
    Shape("lenet", "ip2 dW", 10, 500, 64, trans_a=True, accumulate=True),
    Shape("lenet", "ip2 dx", 64, 500, 10, weights_b=True),
    Shape("lenet", "ip1 dW", 500, 800, 64, trans_a=True, accumulate=True),
    Shape("lenet", "ip1 dx", 64, 800, 500, weights_b=True),
    Shape("lenet", "conv2 dW", 50, 500, 64, trans_b=True, accumulate=True, count=64),
    Shape("lenet", "conv2 dcol", 500, 64, 50, trans_a=True, count=64, weights=True),
    Shape("lenet", "conv1 dW", 20, 25, 576, trans_b=True, accumulate=True, count=64),
    # CaffeNet (bvlc_reference_caffenet), batch 10, forward
    conv_forward("caffenet", "conv1", 96, 363, 3025, 10),
    conv_forward("caffenet", "conv2", 128, 1200, 729, 10, g=2),
    conv_forward("caffenet", "conv3", 384, 2304, 169, 10),
    conv_forward("caffenet", "conv4", 192, 1728, 169, 10, g=2),
    conv_forward("caffenet", "conv5", 128, 1728, 169, 10, g=2),
    Shape("caffenet", "fc6", 10, 4096, 9216, trans_b=True),
    Shape("caffenet", "fc7", 10, 4096, 4096, trans_b=True),
    Shape("caffenet", "fc8", 10, 1000, 4096, trans_b=True),
    # ... and at batch 1 (inference on one image: a matrix times a vector)
    Shape("caffenet", "fc6 b1", 1, 4096, 9216, trans_b=True),
    Shape("caffenet", "fc7 b1", 1, 4096, 4096, trans_b=True),
    Shape("caffenet", "fc8 b1", 1, 1000, 4096, trans_b=True),
    # GoogLeNet (bvlc_googlenet), batch 32, a few inception shapes, forward
    conv_forward("googlenet", "conv2/3x3", 192, 576, 3136, 32),
    conv_forward("googlenet", "3a/1x1", 64, 192, 784, 32, pointwise=True),
    conv_forward("googlenet", "3a/3x3", 128, 864, 784, 32),
    conv_forward("googlenet", "3a/5x5", 32, 400, 784, 32),
    conv_forward("googlenet", "4a/1x1", 192, 480, 196, 32, pointwise=True),
    conv_forward("googlenet", "4a/3x3", 208, 864, 196, 32),
    conv_forward("googlenet", "5b/1x1", 384, 832, 49, 32, pointwise=True),
    conv_forward("googlenet", "5b/3x3", 384, 1728, 49, 32),
    Shape("googlenet", "loss3/fc", 32, 1000, 1024, trans_b=True),
]


def blas_description(np: Any) -> str:
    """Which BLAS numpy calls, and with how many threads."""
    try:
        import threadpoolctl  # type: ignore[import-not-found]

        infos = [i for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        if infos:
            i = infos[0]
            return (f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}), "
                    f"{i.get('num_threads')} threads")  # fmt: skip
    except ImportError:
        pass
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')} (from numpy.show_config)"
    except Exception:  # older numpy: no dict mode
        return "unknown (see numpy.show_config())"


def build(shape: Shape, dtype: str = "float32") -> tuple[ctypes.CDLL, dict[str, Any], int]:
    """The generated GEMM of ``shape`` in a library with ``run(buf, count, reps)``, its plan,
    and the size of the buffer its weights are packed into before the images (0: none)."""
    import caffec
    from caffec.codegen.c import CRenderer
    from caffec.codegen.toolchain import build_library, c_flags
    from caffec.compiler.kernels import Buffer, Operand
    from caffec.compiler.primitives import gemm
    from caffec.compiler.targets.cpu import CpuTarget, plan_gemm, prepack
    from caffec.runtime.threads import thread_policy

    m, n, k, g = shape.m, shape.n, shape.k, shape.batch
    strides = (m * k, k * n, m * n) if g > 1 else (0, 0, 0)
    steps = (0, k * n * g if shape.step_b else 0, m * n * g)
    buffers = [Buffer(name, (1,), "value", index=i) for i, name in enumerate("ABC")]
    a, b, c = (Operand(x, 0, step) for x, step in zip(buffers, steps, strict=True))
    invariant = "a" if shape.weights and shape.count > 1 else None
    kernel = plan_gemm(gemm(a, b, c, m, n, k, shape.trans_a, shape.trans_b,
                            accumulate=shape.accumulate, batch=g, strides=strides,
                            invariant=invariant, weights_b=shape.weights_b))  # fmt: skip
    packed: list[Buffer] = []

    def workspace(name: str, size: tuple[int, ...]) -> Buffer:
        packed.append(Buffer(name, size, "workspace", index=3))
        return packed[-1]

    packs, kernel = prepack(kernel, workspace)
    renderer = CRenderer(CpuTarget())
    prelude = renderer.env.get_template("prelude.c.j2")
    functions = [("k0_pack", renderer.body(p)) for p in packs]
    functions.append(("k1_gemm", renderer.body(kernel)))
    source = prelude.render(version=caffec.__version__, dtype=dtype, n_kernels=len(functions))
    for name, body in functions:
        source += f"\nstatic void {name}(void** buf, long n) {{\n    (void)n;\n{body}}}\n"
    source += (
        "\nvoid run(void** buf, long count, long reps) {\n"
        "    for (long r = 0; r < reps; ++r) {\n"
        + ("        k0_pack(buf, 0);\n" if packs else "")
        + "        for (long n = 0; n < count; ++n) k1_gemm(buf, n);\n    }\n}\n"
    )
    library = ctypes.CDLL(str(build_library(source, c_flags())))
    library.caffec_set_threads(thread_policy().threads)  # as the runtime does for a net
    library.run.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long]
    library.run.restype = None
    return library, kernel.attrs["plan"], packed[0].size if packed else 0


def measure(shape: Shape, rounds: int, np: Any) -> tuple[float, float, str]:
    """(caffec GFLOP/s, numpy GFLOP/s, the plan caffec chose) for ``shape`` in float32."""
    m, n, k, g, count = shape.m, shape.n, shape.k, shape.batch, shape.count
    rng = np.random.default_rng(0)
    a = rng.standard_normal((g, k, m) if shape.trans_a else (g, m, k)).astype(np.float32)
    images = count if shape.step_b else 1
    b = rng.standard_normal((images, g) + ((n, k) if shape.trans_b else (k, n)))
    b = b.astype(np.float32)
    c = np.zeros((count, g, m, n), np.float32)
    library, plan, packed_size = build(shape)
    packed = np.zeros(max(packed_size, 1), np.float32)
    buf = (ctypes.c_void_p * 4)(a.ctypes.data, b.ctypes.data, c.ctypes.data, packed.ctypes.data)
    # numpy: the same products as one stacked matmul (B broadcast where the kernel reuses it)
    a_op = a.transpose(0, 2, 1) if shape.trans_a else a
    b_op = np.broadcast_to(b.transpose(0, 1, 3, 2) if shape.trans_b else b, (count, g, k, n))
    out = np.empty((count, g, m, n), np.float32)

    def caffec_run(reps: int) -> None:
        library.run(buf, count, reps)

    def numpy_run(reps: int) -> None:
        for _ in range(reps):
            np.matmul(a_op, b_op, out=out)

    flops = 2.0 * m * n * k * g * count
    reps = max(1, int(2e9 / flops))  # some 20 ms a round
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for side, run in enumerate((caffec_run, numpy_run)):
            time.sleep(0.15)  # the other side's threads stop spinning and go to sleep
            run(1)  # and this side's wake up
            start = time.perf_counter()
            run(reps)
            best[side] = min(best[side], (time.perf_counter() - start) / reps)
    how = plan["path"] + (", threaded" if plan["parallel"] else "")
    how += ", C'" if plan["swap"] else ""
    how += ", weights packed first" if plan["prepack"] else ""
    return flops / best[0] / 1e9, flops / best[1] / 1e9, how


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS and OPENBLAS_NUM_THREADS")
    parser.add_argument("--only", help="comma-separated groups: square, lenet, caffenet, googlenet")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np  # after the thread settings, which BLAS reads when it loads

    print(f"numpy {np.__version__}, BLAS: {blas_description(np)}")
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    env = {v: os.environ[v] for v in names if v in os.environ}
    print(f"environment: {env or 'no thread or OpenBLAS settings'}; {os.cpu_count()} CPUs")
    groups = set(args.only.split(",")) if args.only else None
    print(f"{'shape':<22} {'M x N x K':>18} {'op':>4} {'times':>6}  {'caffec':>8} {'numpy':>8} "
          f"{'ratio':>6}  plan")  # fmt: skip
    ratios: dict[str, list[float]] = {}
    best = 0.0
    for shape in SHAPES:
        if groups and shape.group not in groups:
            continue
        mine, theirs, how = measure(shape, args.rounds, np)
        ratio = mine / theirs
        best = max(best, mine)
        ratios.setdefault(shape.group, []).append(ratio)
        op = ("T" if shape.trans_a else "N") + ("T" if shape.trans_b else "N")
        times = shape.count * shape.batch
        print(f"{shape.group + ' ' + shape.name:<22} {f'{shape.m}x{shape.n}x{shape.k}':>18} "
              f"{op:>4} {times:>6}  {mine:8.1f} {theirs:8.1f} {ratio:6.2f}  {how}",
              flush=True)  # fmt: skip
    for group, values in ratios.items():
        geo = float(np.exp(np.mean(np.log(values))))
        print(f"{group}: geometric mean ratio {geo:.2f} (min {min(values):.2f})")
    from caffec.codegen.peak import measure_peak
    from caffec.runtime.threads import thread_policy

    peak = measure_peak()
    threads = thread_policy().threads
    clock, how = clock_estimate(threads)
    print(f"peak: {peak.describe()}; the clock's estimate was {clock:.0f} GFLOP/s ({how})")
    print(
        f"caffec's best GEMM above reaches {best:.1f} GFLOP/s, "
        f"{100 * best / peak.at(threads):.0f}% of the measured peak on {threads} threads"
    )
    return 0


def clock_estimate(cores: int) -> tuple[float, str]:
    """The peak float32 rate as cores x 32 FLOPs per cycle (two 256-bit FMA pipes) x the
    clock /proc/cpuinfo reports, and how it was computed: what this script printed before
    the probe, shown beside it because boost clocks and pipe widths make it wrong."""
    try:
        with open("/proc/cpuinfo") as info:
            mhz = max(float(line.split(":")[1]) for line in info if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return float("nan"), "the clock is unknown: no /proc/cpuinfo"
    per_cycle = 32
    return cores * per_cycle * mhz / 1000, f"{cores} cores x {per_cycle} FLOP/cycle x {mhz:.0f} MHz"


if __name__ == "__main__":
    sys.exit(main())
