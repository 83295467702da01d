#!/usr/bin/env bash
# Fine-tunes CaffeNet for the 20 Flickr styles: every layer starts from a
# trained CaffeNet's weights except the renamed last one (fc8_flickr), which
# starts from its fillers and learns ten times faster.
#   bash examples/finetune_flickr_style/finetune_flickr_style.sh [WEIGHTS] [flags]
# WEIGHTS: a CaffeNet .caffemodel (default
# models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel, the
# trained model Caffe's project publishes; caffec does not ship it). Needs the
# lists of create_flickr_style.sh and the ImageNet mean
# data/ilsvrc12/imagenet_mean.binaryproto (examples/imagenet/make_imagenet_mean.sh).
# Extra flags go to `caffec train`. The log goes to the terminal and to
# examples/finetune_flickr_style/finetune_flickr_style.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
weights=models/bvlc_reference_caffenet/bvlc_reference_caffenet.caffemodel
case ${1:-} in *.caffemodel | *.caffemodel.h5) weights=$1; shift ;; esac
if [ ! -f "$weights" ]; then
    echo "finetune_flickr_style.sh: no weights $weights" >&2
    echo "  give a trained CaffeNet: $0 PATH/bvlc_reference_caffenet.caffemodel" >&2
    exit 2
fi
for need in data/flickr_style/train.txt data/flickr_style/test.txt \
    data/ilsvrc12/imagenet_mean.binaryproto; do
    if [ ! -f "$need" ]; then
        echo "finetune_flickr_style.sh: no $need" >&2
        echo "  the lists come from examples/finetune_flickr_style/create_flickr_style.sh," \
            "the mean from examples/imagenet/make_imagenet_mean.sh" >&2
        exit 2
    fi
done
"$caffec" train -solver models/finetune_flickr_style/solver.prototxt -weights "$weights" "$@" \
    2>&1 | tee examples/finetune_flickr_style/finetune_flickr_style.log
