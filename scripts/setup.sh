#!/usr/bin/env bash
# Sets caffec up on a Debian or Ubuntu machine: the system packages it needs
# (installed with apt-get only when missing), a virtual environment in .venv,
# and caffec itself in editable mode with the test, data, docs and draw extras.
#   bash scripts/setup.sh          # idempotent; rerun after pulling
#   bash scripts/setup.sh --mpi    # also Open MPI and mpi4py, for data-parallel training
set -euo pipefail
cd "$(dirname "$0")/.."

extras=test,data,docs,draw
with_mpi=false
for arg in "$@"; do
    case "$arg" in
        --mpi) with_mpi=true; extras+=,mpi ;;
        *) echo "setup: unknown option '$arg' (options: --mpi)" >&2; exit 2 ;;
    esac
done

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: caffec needs Python 3.11 or newer as '$python' (set PYTHON=...)" >&2
    exit 2
fi

missing=()
"$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v cc >/dev/null || missing+=(build-essential)
command -v dot >/dev/null || missing+=(graphviz)
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
if $with_mpi; then
    command -v mpirun >/dev/null || missing+=(openmpi-bin)
    dpkg -s libopenmpi-dev >/dev/null 2>&1 || missing+=(libopenmpi-dev)  # mpi4py builds on it
fi
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
