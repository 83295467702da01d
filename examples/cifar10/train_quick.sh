#!/usr/bin/env bash
# Trains the quick CIFAR-10 net as Caffe's train_quick.sh: 4000 iterations at
# lr 0.001, then, resumed from that snapshot, 1000 more at lr 0.0001 (about 75%
# test accuracy). Run create_cifar10.sh first. Extra flags go to both
# `caffec train` runs (e.g. -gpu 0). The log of both stages goes to the
# terminal and to examples/cifar10/cifar10_quick_train.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/cifar10/common.sh
log=examples/cifar10/cifar10_quick_train.log
: > "$log"
train -solver examples/cifar10/cifar10_quick_solver.prototxt "$@"
# reduce the learning rate by a factor of 10 after 8 epochs
train -solver examples/cifar10/cifar10_quick_solver_lr1.prototxt \
    -snapshot "$(last_snapshot examples/cifar10/cifar10_quick_solver.prototxt)" "$@"
