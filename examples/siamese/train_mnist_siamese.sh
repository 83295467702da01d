#!/usr/bin/env bash
# Trains the siamese net on the pair databases that create_mnist_siamese.sh
# made, as Caffe's train_mnist_siamese.sh; the log goes to the terminal and to
# examples/siamese/mnist_siamese_train.log.
#   bash examples/siamese/train_mnist_siamese.sh
#   MAX_ITER=5000 bash examples/siamese/train_mnist_siamese.sh   # a shorter run
# MAX_ITER trains with a copy of the solver whose max_iter is changed (the
# last snapshot is then mnist_siamese_iter_$MAX_ITER.caffemodel).
set -euo pipefail
cd "$(dirname "$0")/../.."
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
for db in examples/siamese/mnist_siamese_train_leveldb examples/siamese/mnist_siamese_test_leveldb; do
    if [ ! -d "$db" ]; then
        echo "train_mnist_siamese.sh: no $db; run examples/siamese/create_mnist_siamese.sh first" >&2
        exit 2
    fi
done
solver=examples/siamese/mnist_siamese_solver.prototxt
if [ -n "${MAX_ITER:-}" ]; then
    case $MAX_ITER in
        '' | *[!0-9]*) echo "train_mnist_siamese.sh: MAX_ITER=$MAX_ITER is not a number" >&2; exit 2 ;;
    esac
    short=$(mktemp "${TMPDIR:-/tmp}/mnist_siamese_solver.XXXXXX")
    trap 'rm -f "$short"' EXIT
    sed -E "s/^max_iter:.*/max_iter: $MAX_ITER/" "$solver" > "$short"
    solver=$short
fi
"$caffec" train -solver "$solver" "$@" 2>&1 | tee examples/siamese/mnist_siamese_train.log
