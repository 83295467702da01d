#!/usr/bin/env bash
# Makes the siamese example's pair databases from MNIST-format IDX files, as
# Caffe's create_mnist_siamese.sh: one random pair per image, labelled 1 when
# both images are of the same class, in LevelDB.
#   bash examples/siamese/create_mnist_siamese.sh [IDX_DIR]
# IDX_DIR holds train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
# t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]; the default is
# Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist).
# Existing databases are kept: delete examples/siamese/*_leveldb to redo them.
set -euo pipefail
cd "$(dirname "$0")/../.."
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
idx=${1:-/usr/share/datasets/fashion-mnist}
if [ ! -d "$idx" ]; then
    echo "create_mnist_siamese.sh: no folder $idx" >&2
    [ "$idx" = /usr/share/datasets/fashion-mnist ] &&
        echo "  install it with: sudo apt-get install dataset-fashion-mnist" >&2
    echo "  or give a folder of MNIST-format IDX files: $0 IDX_DIR" >&2
    exit 2
fi

find_idx() {
    for file in "$idx/$1" "$idx/$1.gz"; do
        if [ -e "$file" ]; then echo "$file"; return; fi
    done
    echo "create_mnist_siamese.sh: no $1 (or $1.gz) in $idx" >&2
    exit 2
}

for split in train:train t10k:test; do
    name=${split%%:*}
    db=examples/siamese/mnist_siamese_${split##*:}_leveldb
    if [ -d "$db" ]; then
        echo "$db exists; kept"
        continue
    fi
    images=$(find_idx "$name-images-idx3-ubyte")
    labels=$(find_idx "$name-labels-idx1-ubyte")
    "$caffec" convert-mnist-siamese "$images" "$labels" "$db" -backend leveldb
done
echo "Done."
