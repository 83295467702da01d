# What the CIFAR-10 training scripts share; sourced from the checkout's root.
caffec=caffec
[ -x .venv/bin/caffec ] && caffec=.venv/bin/caffec
for db in examples/cifar10/cifar10_train_lmdb examples/cifar10/cifar10_test_lmdb \
    examples/cifar10/mean.binaryproto; do
    if [ ! -e "$db" ]; then
        echo "$(basename "$0"): no $db; run examples/cifar10/create_cifar10.sh first" >&2
        exit 2
    fi
done

# `caffec train ARGS`, its log appended to $log as well as shown
train() {
    "$caffec" train "$@" 2>&1 | tee -a "$log"
}

# the snapshot a solver writes when it reaches its max_iter (a .solverstate, or
# .solverstate.h5 with snapshot_format: HDF5)
last_snapshot() {
    local prefix iter suffix=""
    prefix=$(sed -n 's/^snapshot_prefix: *"\(.*\)"/\1/p' "$1")
    iter=$(sed -n 's/^max_iter: *\([0-9]*\).*/\1/p' "$1")
    grep -q '^snapshot_format: *HDF5' "$1" && suffix=.h5
    echo "${prefix}_iter_${iter}.solverstate${suffix}"
}
