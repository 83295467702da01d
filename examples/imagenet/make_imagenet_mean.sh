#!/usr/bin/env bash
# Computes the mean image of the training LMDB that create_imagenet.sh wrote,
# as Caffe's make_imagenet_mean.sh, into data/ilsvrc12/imagenet_mean.binaryproto
# (the mean_file of the CaffeNet, AlexNet and Flickr Style nets).
set -euo pipefail
cd "$(dirname "$0")/../.."
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
db=examples/imagenet/ilsvrc12_train_lmdb
if [ ! -d "$db" ]; then
    echo "make_imagenet_mean.sh: no $db; run examples/imagenet/create_imagenet.sh first" >&2
    exit 2
fi
mkdir -p data/ilsvrc12
"$caffec" compute-mean "$db" data/ilsvrc12/imagenet_mean.binaryproto
echo "Done."
