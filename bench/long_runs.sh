#!/usr/bin/env bash
# The headline JULE cells on a 2-core CPU: MNIST-full and COIL-100 side by side, one thread each.
# Resumable: run it again after a stop and each cell continues from its last finished period.
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # deterministic runs repeat at a given thread count
python bench/reproduce.py --methods jule --datasets mnist_full --seeds 3 --allow-slow-cpu > runs/long_mnist.log 2>&1 &
python bench/reproduce.py --methods jule --datasets coil100 --seeds 3 --allow-slow-cpu > runs/long_coil.log 2>&1 &
wait
