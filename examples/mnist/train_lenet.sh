#!/usr/bin/env bash
# Caffe's LeNet example, on Fashion-MNIST by default: builds the LMDBs, trains
# 10000 iterations with examples/mnist/lenet_solver.prototxt, and reports the
# final test accuracy.
#   bash examples/mnist/train_lenet.sh [IDX_DIR]
# IDX_DIR holds MNIST-format files (train-images-idx3-ubyte[.gz], ...); the
# default is Debian's dataset-fashion-mnist, installed here when missing.
# Delete examples/mnist/mnist_*_lmdb to convert another data set.
set -euo pipefail
cd "$(dirname "$0")/../.."
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
idx=${1:-/usr/share/datasets/fashion-mnist}

if [ ! -d "$idx" ] && [ "$idx" = /usr/share/datasets/fashion-mnist ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist
fi

find_idx() {
    for file in "$idx/$1" "$idx/$1.gz"; do
        if [ -e "$file" ]; then echo "$file"; return; fi
    done
    echo "train_lenet.sh: no $1 (or $1.gz) in $idx" >&2
    exit 2
}

for split in train:train t10k:test; do
    name=${split%%:*}
    db=examples/mnist/mnist_${split##*:}_lmdb
    if [ ! -d "$db" ]; then
        "$caffec" convert-mnist "$(find_idx "$name-images-idx3-ubyte")" \
            "$(find_idx "$name-labels-idx1-ubyte")" "$db"
    fi
done

log=examples/mnist/lenet_train.log
"$caffec" train -solver examples/mnist/lenet_solver.prototxt 2>&1 | tee "$log"
accuracy=$(grep "Test net output #0: accuracy" "$log" | tail -n 1 | sed 's/.*accuracy = //')
echo "LeNet test accuracy after 10000 iterations: $accuracy"
