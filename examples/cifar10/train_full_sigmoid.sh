#!/usr/bin/env bash
# Trains the full net with sigmoid activations, as Caffe's
# train_full_sigmoid.sh (compare train_full_sigmoid_bn.sh). Run
# create_cifar10.sh first. The log goes to the terminal and to
# examples/cifar10/cifar10_full_sigmoid_train.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/cifar10/common.sh
log=examples/cifar10/cifar10_full_sigmoid_train.log
: > "$log"
train -solver examples/cifar10/cifar10_full_sigmoid_solver.prototxt "$@"
