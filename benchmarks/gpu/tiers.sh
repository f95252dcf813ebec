#!/usr/bin/env bash
# Every notebook's gpu tier in one device call (run(command="bash benchmarks/gpu/tiers.sh", carry=[".whl",
# ".data"], timeout_s=...)), after benchmarks/gpu/prepare.sh here. The CUDA tests and the six notebooks run
# side by side, each a process of its own on the one GPU (the small models leave it mostly idle, and the
# machine has 16 cores), each cut at LIMIT seconds; papermill saves the executed notebook after every cell and
# results.partial.json holds every number measured so far, so a notebook cut short still returns what it computed. What comes back is at most 8 files: steps.txt, one
# archive per notebook (the executed notebook, results.json, the log) and tests.tar.gz (versions, CUDA tests,
# GPU use, benchmarks). The data cache is built once first, so the notebooks do not all decode the images.
#   LIMIT (default 360): seconds per notebook;  ONLY (default all): e.g. "02 04" reruns some notebooks;
#   EXTRA_<nb>: more arguments for one notebook's run (e.g. EXTRA_04="-f part.yaml"); TESTS_LIMIT (150);
#   FEDREPRO_COMMIT: the commit the call sends (the copy's .git there may be the session's first checkout), e.g.
#   run(command=f"FEDREPRO_COMMIT={HEAD} bash benchmarks/gpu/tiers.sh", ...) with HEAD read here first.
# Learned on the first run (2026-12-04): seven jobs time-sliced on one GPU each ran several times slower than
# alone (a FedAvg round of notebook 04's CNN took over 2.5 s), so give each job its share of the limit.
#   DEADLINE (default 450): seconds after the start by which the benchmarks that follow on the then idle GPU
#   (inversion, FedAvg, DP-SGD overhead, each at most 60 s) must end; those that do not fit are skipped.
set -uo pipefail
source benchmarks/gpu/setup.sh
LIMIT=${LIMIT:-360}
ONLY=${ONLY:-00 01 02 03 04 05 06}
step env 30 bash -c 'nvidia-smi; python3 -c "import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name())"'
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$OUT/gpu_use.log" 2>&1 &
monitor=$!
mkdir -p "$OUT/runs"
step data_cache 120 python3 -c "from fedrepro.data import load_dataset as d; [d(n, s) for n in ('cifar10', 'mnist') for s in ('train', 'test')]"
step cuda_tests "${TESTS_LIMIT:-150}" python3 -m pytest -v --timeout 60 -m cuda -p no:cacheprovider tests/test_cuda.py &
jobs_started=($!)
for nb in $ONLY; do
  extra="EXTRA_$nb"  # e.g. EXTRA_04="-f /tmp/part.yaml": a parameter file that narrows one notebook's run
  step "runs/$nb" "$LIMIT" python3 -c "import sys; from fedrepro.cli import main; sys.exit(main(sys.argv[1:]))" \
    run "$nb" --tier gpu ${!extra:-} --out "$OUT/runs/$nb" &
  jobs_started+=($!)
done
wait "${jobs_started[@]}"
kill "$monitor" 2>/dev/null
DEADLINE=${DEADLINE:-450}
bench() {  # bench NAME COMMAND...: a benchmark step, if at least 30 s are left before DEADLINE
  local left=$((DEADLINE - SECONDS)); local name=$1; shift
  if ((left >= 30)); then step "$name" $((left < 60 ? left : 60)) "$@"; else echo "$name skipped" >> "$OUT/steps.txt"; fi
}
bench bench_inversion python3 benchmarks/inversion_speed.py --device cuda --victims 256 --iterations 50
bench bench_dp python3 benchmarks/dp_overhead.py --device cuda --models cnn tanhnet resnet9 --batch 256 --samples 2048
bench bench_fedavg python3 benchmarks/fedavg_speed.py --device cuda --rounds 3 --repeats 1
cd "$OUT" && tar czf runs.tar.gz runs
tar czf tests.tar.gz env.txt data_cache.txt cuda_tests.txt gpu_use.log bench_*.txt 2>/dev/null
rm -rf runs env.txt data_cache.txt cuda_tests.txt gpu_use.log bench_*.txt
ls -la "$OUT"; cat "$OUT/steps.txt"
