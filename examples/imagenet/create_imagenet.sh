#!/usr/bin/env bash
# Converts ImageNet's training and validation images into the LMDBs the
# ImageNet models train on, as Caffe's create_imagenet.sh: every image resized
# to 256x256 and the training list shuffled.
#   bash examples/imagenet/create_imagenet.sh TRAIN_DATA_ROOT VAL_DATA_ROOT
# The roots are the folders the images were unpacked to; the lists of
# "relative/path.JPEG label" lines are $DATA/train.txt and $DATA/val.txt
# (DATA defaults to data/ilsvrc12, where Caffe's get_ilsvrc_aux.sh puts them).
# RESIZE_HEIGHT and RESIZE_WIDTH change the size (0 and 0: keep each image's).
# Writes examples/imagenet/ilsvrc12_train_lmdb and ilsvrc12_val_lmdb, anew.
set -euo pipefail
here=$(pwd)
cd "$(dirname "$0")/../.."
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
example=examples/imagenet
data=${DATA:-data/ilsvrc12}
resize_height=${RESIZE_HEIGHT:-256}
resize_width=${RESIZE_WIDTH:-256}

absolute() { case $1 in /*) echo "$1" ;; *) echo "$here/$1" ;; esac; }
if [ $# -lt 2 ]; then
    echo "usage: $0 TRAIN_DATA_ROOT VAL_DATA_ROOT" >&2
    echo "  the folders of ImageNet's training and validation images (ImageNet cannot be" >&2
    echo "  shipped: download ILSVRC2012 from image-net.org); lists in \$DATA ($data)" >&2
    exit 2
fi
train_root=$(absolute "$1")
val_root=$(absolute "$2")
[ -d "$here/$data" ] && data=$here/$data
for dir in "$train_root" "$val_root"; do
    if [ ! -d "$dir" ]; then
        echo "create_imagenet.sh: no folder $dir" >&2
        exit 2
    fi
done
for list in "$data/train.txt" "$data/val.txt"; do
    if [ ! -f "$list" ]; then
        echo "create_imagenet.sh: no list $list of 'path label' lines" >&2
        echo "  set DATA to the folder of train.txt and val.txt" >&2
        exit 2
    fi
done

echo "Creating train lmdb..."
rm -rf "$example/ilsvrc12_train_lmdb" "$example/ilsvrc12_val_lmdb"
"$caffec" convert-imageset -resize_height "$resize_height" -resize_width "$resize_width" \
    -shuffle "$train_root/" "$data/train.txt" "$example/ilsvrc12_train_lmdb"

echo "Creating val lmdb..."
"$caffec" convert-imageset -resize_height "$resize_height" -resize_width "$resize_width" \
    "$val_root/" "$data/val.txt" "$example/ilsvrc12_val_lmdb"
echo "Done."
