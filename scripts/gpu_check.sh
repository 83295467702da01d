#!/usr/bin/env bash
# The GPU checks on a machine with an NVIDIA GPU, CuPy and PyTorch but no network and
# no caffec install: the `gpu`-marked tests, the GPU benchmark, then GoogLeNet's training
# step timed layer by layer on the GPU.
#
#   bash scripts/gpu_check.sh prepare   # here, with network access: fills .whl/ (the
#                                       # wheels that machine lacks) and .gpu/ (the corpus
#                                       # and Fashion-MNIST); both are git-ignored
#   bash scripts/gpu_check.sh           # there, from the checkout with .whl/ and .gpu/
#
# The second form installs .whl/ into a temporary folder (nothing outside it changes),
# runs caffec from the checkout, and writes its logs to $OUT when set, else .gpu/.
# GPU_PYTHON (default 3.12) is the Python version of the GPU machine, for `prepare`.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

if [ "${1:-}" = prepare ]; then
    version=${GPU_PYTHON:-3.12}
    rm -rf .whl && mkdir -p .whl .gpu
    for package in lark==1.3.1 lmdb==3.0.0; do
        "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d .whl "$package"
    done
    rm -rf .gpu/corpus .gpu/fashion-mnist
    cp -r ../shared/corpus .gpu/corpus
    cp -r "${CAFFEC_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}" .gpu/fashion-mnist
    echo "prepared .whl/ and .gpu/ ($(du -sh .whl .gpu | awk '{print $1}' | paste -sd+)): carry both"
    exit 0
fi

site=$(mktemp -d)
"$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export CAFFEC_FASHION_MNIST="$PWD/.gpu/fashion-mnist" PYTHONUNBUFFERED=1
[ -e ../shared/corpus ] || { mkdir -p ../shared && ln -s "$PWD/.gpu/corpus" ../shared/corpus; }
logs=${OUT:-.gpu}
mkdir -p "$logs"
nvidia-smi -L || true
status=0
# the corpus nets each compile C and CUDA: several test processes when pytest-xdist is there
parallel=$("$python" -c 'import xdist' 2>/dev/null && echo "-n 8" || true)
# shellcheck disable=SC2086
"$python" -m pytest -q -m gpu -p no:cacheprovider $parallel tests 2>&1 | tee "$logs/gpu-tests.log" \
    || status=1
"$python" benchmarks/vs_pytorch.py --gpu 2>&1 | tee "$logs/gpu-benchmark.log" || status=1
# GoogLeNet's training step layer by layer on the GPU: which layers the generated kernels
# (the CPU's algorithm choices included) make slow
timeout 240 "$python" -m caffec time -gpu 0 -iterations 3 \
    -model .gpu/corpus/bvlc/models/bvlc_googlenet/train_val.prototxt \
    --shape data=32,3,224,224 --shape label=32 2>&1 | tee "$logs/gpu-time-googlenet.log" \
    || status=1
exit $status
