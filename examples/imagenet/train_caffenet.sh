#!/usr/bin/env bash
# Trains CaffeNet from scratch with Caffe's solver, as Caffe's train_caffenet.sh
# (450000 iterations of 256 images; snapshots every 10000 in
# models/bvlc_reference_caffenet/caffenet_train_iter_N.*). Run
# create_imagenet.sh and make_imagenet_mean.sh first. Extra flags go to
# `caffec train` (e.g. -gpu 0). The log goes to the terminal and to
# examples/imagenet/caffenet_train.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
for need in examples/imagenet/ilsvrc12_train_lmdb examples/imagenet/ilsvrc12_val_lmdb \
    data/ilsvrc12/imagenet_mean.binaryproto; do
    if [ ! -e "$need" ]; then
        echo "train_caffenet.sh: no $need; run examples/imagenet/create_imagenet.sh" \
            "and make_imagenet_mean.sh first" >&2
        exit 2
    fi
done
"$caffec" train -solver models/bvlc_reference_caffenet/solver.prototxt "$@" 2>&1 |
    tee examples/imagenet/caffenet_train.log
