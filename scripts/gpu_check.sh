#!/usr/bin/env bash
# The GPU checks on a machine with an NVIDIA GPU, CuPy and PyTorch but no network and
# no caffec install: the `gpu`-marked tests, the GPU benchmark (float32, then LeNet's and
# ResNet-50's steps in TF32 and in bfloat16 on tensor cores), then GoogLeNet's training
# step timed layer by layer and kernel by kernel on the GPU.
#
#   bash scripts/gpu_check.sh prepare   # here, with network access: fills .whl/ (the
#                                       # wheels that machine lacks) and .gpu/ (the corpus
#                                       # and Fashion-MNIST); both are git-ignored
#   bash scripts/gpu_check.sh           # there, from the checkout with .whl/ and .gpu/
#   GPU_STEPS="tests corpus" bash scripts/gpu_check.sh   # some of the steps: tests, corpus,
#                                       # benchmark, time (default: all four)
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

steps=" ${GPU_STEPS:-tests corpus benchmark time} "
for name in $steps; do
    case $name in
        tests | corpus | benchmark | time) ;;
        *) echo "gpu_check.sh: GPU_STEPS names '$name', which is not a step" \
            "(the steps: tests corpus benchmark time)" >&2; exit 2 ;;
    esac
done

site=$(mktemp -d)
"$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export CAFFEC_FASHION_MNIST="$PWD/.gpu/fashion-mnist" PYTHONUNBUFFERED=1
[ -e ../shared/corpus ] || { mkdir -p ../shared && ln -s "$PWD/.gpu/corpus" ../shared/corpus; }
logs=${OUT:-.gpu}
mkdir -p "$logs"
nvidia-smi -L || true
"$python" -c 'import cupy; print("CuPy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())' || true
status=0
# each step has its own time limit, so that one that hangs leaves the others their turn;
# the quick tests first, then the corpus (each net compiles C and CUDA: several test
# processes when pytest-xdist is there), then the timings
parallel=$("$python" -c 'import xdist' 2>/dev/null && echo "-n 12" || true)
step() {  # step NAME SECONDS COMMAND...: COMMAND's output to the screen and $logs/gpu-NAME.log
    local name=$1 seconds=$2  # NAME-PART runs with the step NAME
    shift 2
    [[ $steps == *" ${name%%-*} "* ]] || return 0
    echo "== $name (at most $seconds s)"
    timeout "$seconds" "$@" 2>&1 | tee "$logs/gpu-$name.log" || status=1
}
pytest=("$python" -m pytest -q -m gpu -p no:cacheprovider -rfEs --tb=short -o faulthandler_timeout=90)
step tests 100 "${pytest[@]}" -rP tests --ignore=tests/compiler/test_cuda_target.py
# shellcheck disable=SC2086
step corpus 90 "${pytest[@]}" $parallel tests/compiler/test_cuda_target.py
# the benchmark's cases print in turn, so a step cut off by its limit keeps the lines before;
# in TF32 and bfloat16 LeNet and ResNet-50 only: each precision compiles its own kernels
step benchmark 120 "$python" benchmarks/vs_pytorch.py --gpu
step benchmark-tf32 50 "$python" benchmarks/vs_pytorch.py --gpu --precision tf32 --only lenet,resnet50_b32
step benchmark-bf16 50 "$python" benchmarks/vs_pytorch.py --gpu --precision bf16 --only lenet,resnet50_b32
# GoogLeNet's training step layer by layer and kernel by kernel on the GPU: which layers
# the generated kernels (the CUDA target's own algorithm choices) make slow
step time 70 "$python" -m caffec time -gpu 0 -iterations 3 --kernels \
    -model .gpu/corpus/bvlc/models/bvlc_googlenet/train_val.prototxt \
    --shape data=32,3,224,224 --shape label=32
exit $status
