#!/usr/bin/env bash
# The whole GPU job of one device call, in the repository root of the GPU machine (no network; torch with
# CUDA preinstalled, never replaced). Prepared here by benchmarks/gpu/prepare.sh; writes every result under
# $OUT. Each step has its own time limit so one slow step cannot eat the others' (budget: about 8 minutes).
#   1. install the carried wheels beside the image's torch; extract the data
#   2. the device, torch and CUDA versions (every GPU number is read against them)
#   3. pytest -m cuda: each engine on CUDA against the CPU (tests/test_cuda.py)
#   4. every notebook's smoke tier with device auto, under nbval
#   5. the benchmarks with --device cuda, each printing its ratio against the naive way
set -uo pipefail
OUT=${OUT:-/tmp/fedrepro-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed" > "$OUT/FAILED"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
export FEDREPRO_DATA=/tmp/fedrepro-data TQDM_DISABLE=1
(cd .data && sha256sum --check --quiet SHA256SUMS) || { echo "data checksum mismatch" > "$OUT/FAILED"; exit 1; }
for pair in cifar10:cifar10-jpg mnist:mnist-png; do
  mkdir -p "$FEDREPRO_DATA/${pair%%:*}" && tar xzf ".data/${pair#*:}.tar.gz" -C "$FEDREPRO_DATA/${pair%%:*}"
done
python3 -m ipykernel install --user --name python3 > /dev/null 2>&1

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep its output and wall time
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name rc=$? ${limit}s-limit $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
}
step env 30 bash -c 'nvidia-smi; python3 -c "import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name())"'
step cuda_tests 150 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
step smoke 240 python3 -m pytest -q --nbval-lax -p no:cacheprovider notebooks
step inversion 60 python3 benchmarks/inversion_speed.py --device cuda --victims 256 --iterations 50
step fedavg 60 python3 benchmarks/fedavg_speed.py --device cuda --rounds 3 --repeats 1
step dp 60 python3 benchmarks/dp_overhead.py --device cuda --models cnn tanhnet resnet9 --batch 256 --samples 2048
tail -n 3 "$OUT"/*.txt
