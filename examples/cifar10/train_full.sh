#!/usr/bin/env bash
# Trains the full CIFAR-10 net as Caffe's train_full.sh: 60000 iterations at
# lr 0.001, 5000 at 0.0001, 5000 at 0.00001, each stage resumed from the last
# one's HDF5 snapshot (about 81% test accuracy). Run create_cifar10.sh first.
# Extra flags go to every `caffec train` run. The log goes to the terminal and
# to examples/cifar10/cifar10_full_train.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/cifar10/common.sh
log=examples/cifar10/cifar10_full_train.log
: > "$log"
train -solver examples/cifar10/cifar10_full_solver.prototxt "$@"
# reduce the learning rate by a factor of 10
train -solver examples/cifar10/cifar10_full_solver_lr1.prototxt \
    -snapshot "$(last_snapshot examples/cifar10/cifar10_full_solver.prototxt)" "$@"
# and by a factor of 10 again
train -solver examples/cifar10/cifar10_full_solver_lr2.prototxt \
    -snapshot "$(last_snapshot examples/cifar10/cifar10_full_solver_lr1.prototxt)" "$@"
