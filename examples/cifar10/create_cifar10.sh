#!/usr/bin/env bash
# Converts CIFAR-10's binary version into the example's two LMDBs and computes
# the training images' mean, as Caffe's create_cifar10.sh:
#   examples/cifar10/cifar10_train_lmdb  (data_batch_1.bin .. data_batch_5.bin)
#   examples/cifar10/cifar10_test_lmdb   (test_batch.bin)
#   examples/cifar10/mean.binaryproto
# CIFAR-10 cannot be shipped with caffec: download "CIFAR-10 binary version"
# (cifar-10-binary.tar.gz) from its authors' page and give its path, or the
# folder it unpacks to (cifar-10-batches-bin):
#   bash examples/cifar10/create_cifar10.sh ~/Downloads/cifar-10-binary.tar.gz
#   bash examples/cifar10/create_cifar10.sh path/to/cifar-10-batches-bin
# Without an argument, $CIFAR10_DATA, then data/cifar10 (where Caffe's
# get_cifar10.sh puts the files) are used. The databases are made anew.
set -euo pipefail
here=$(pwd)
cd "$(dirname "$0")/../.."
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
example=examples/cifar10
data=${1:-${CIFAR10_DATA:-data/cifar10}}
case $data in /*) ;; *) [ -e "$here/$data" ] && data=$here/$data ;; esac

if [ ! -e "$data" ]; then
    echo "create_cifar10.sh: no CIFAR-10 data at $data" >&2
    echo "  download the binary version (cifar-10-binary.tar.gz) and give its path:" >&2
    echo "  bash $example/create_cifar10.sh PATH/cifar-10-binary.tar.gz" >&2
    exit 2
fi
if [ -f "$data" ]; then  # the archive as downloaded: unpack it beside the databases
    echo "Unpacking $data..."
    tar -xzf "$data" -C "$example" || {
        echo "create_cifar10.sh: $data is not CIFAR-10's .tar.gz" >&2
        exit 2
    }
    data=$example/cifar-10-batches-bin
fi
[ -d "$data/cifar-10-batches-bin" ] && data=$data/cifar-10-batches-bin

echo "Creating lmdb..."
rm -rf "$example/cifar10_train_lmdb" "$example/cifar10_test_lmdb"
"$caffec" convert-cifar "$data" "$example" lmdb

echo "Computing image mean..."
"$caffec" compute-mean -backend lmdb "$example/cifar10_train_lmdb" "$example/mean.binaryproto"
echo "Done."
