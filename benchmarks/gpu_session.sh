#!/usr/bin/env bash
# The GPU measurements of issue 15, in one call of a lent GPU machine (benchmarks/RESULTS.md, GPU).
# Runs from the repository root with the machine's own python3 (torch with CUDA); writes each
# benchmark's output under $OUT (default /tmp/gpu_out).  Data: FEDGRAD_DATA_SOURCE (default
# ./.devdata, a copy of the offline data carried along).  Steps are ordered by value and each has
# its own timeout, so a slow step costs only itself.  SKIP_TRAINING_BENCH=1 skips the local-training
# benchmark (about a minute).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export FEDGRAD_DATA_SOURCE=${FEDGRAD_DATA_SOURCE:-$PWD/.devdata}
export FEDGRAD_DATA_ROOT=/tmp/fg_data FEDGRAD_CACHE=/tmp/fg_cache
step() { local name=$1 limit=$2; shift 2; echo "== $name"; local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v "^\s*$" | tee "$OUT/$name.txt"; echo "== $name: rc ${PIPESTATUS[0]}, $((SECONDS - t0)) s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, numpy, sklearn, scipy, pandas, tqdm; print("torch", torch.__version__, torch.cuda.get_device_name(0))' | tee -a "$OUT/gpu.txt"
# the data, prepared once (JPEG decoding) before anything is timed
step data 120 python3 -c 'from fedgrad_core.data import load_task; [load_task(d) for d in ("mnist", "cifar10")]'
step tests_cuda 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
[ -n "${SKIP_TRAINING_BENCH:-}" ] || step bench_training_cuda 150 python3 benchmarks/bench_training.py --device cuda --sizes paper --threads 8 --repeats 3
step rounds_fedavg 120 python3 benchmarks/time_rounds.py paper_cifar10 paper_emnist_sized --device cuda --rounds 3 --threads 8 --defense fedavg
step rounds_fedgrad 120 python3 benchmarks/time_rounds.py paper_cifar10 paper_emnist_sized --device cuda --rounds 3 --threads 8 --defense fedgrad
step rounds_fedavg_sequential 90 python3 benchmarks/time_rounds.py paper_cifar10 paper_emnist_sized --device cuda --rounds 3 --threads 8 --defense fedavg --client-batching off
step determinism_cuda 90 python3 benchmarks/check_determinism.py --device cuda --rounds 3
step determinism_cuda_sequential 90 python3 benchmarks/check_determinism.py --device cuda --rounds 3 --client-batching off
# the other defenses' rounds on the paper's CIFAR-10 setting (their server cost runs on the CPU)
for d in krum multikrum foolsgold rfa rlr flame deepsight; do
  step "rounds_$d" 60 python3 benchmarks/time_rounds.py paper_cifar10 --device cuda --rounds 2 --threads 8 --defense "$d"
done
