#!/usr/bin/env bash
# Resumes CaffeNet's training from a snapshot, as Caffe's resume_training.sh.
#   bash examples/imagenet/resume_training.sh [SNAPSHOT.solverstate] [flags]
# Without a snapshot, the newest
# models/bvlc_reference_caffenet/caffenet_train_iter_N.solverstate[.h5].
# The log is appended to examples/imagenet/caffenet_train.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
snapshot=""
case ${1:-} in *.solverstate | *.solverstate.h5) snapshot=$1; shift ;; esac
if [ -z "$snapshot" ]; then
    newest=-1
    for state in models/bvlc_reference_caffenet/caffenet_train_iter_*.solverstate*; do
        [ -e "$state" ] || continue
        n=${state##*_iter_}
        n=${n%%.*}
        if [ "$n" -gt "$newest" ]; then newest=$n; snapshot=$state; fi
    done
    if [ -z "$snapshot" ]; then
        echo "resume_training.sh: no models/bvlc_reference_caffenet/caffenet_train_iter_*.solverstate;" \
            "train with examples/imagenet/train_caffenet.sh first, or give a snapshot" >&2
        exit 2
    fi
fi
"$caffec" train -solver models/bvlc_reference_caffenet/solver.prototxt \
    -snapshot "$snapshot" "$@" 2>&1 | tee -a examples/imagenet/caffenet_train.log
