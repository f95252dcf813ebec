#!/usr/bin/env bash
# The engine check of one device call, in the repository root of the GPU machine (no network; torch with
# CUDA preinstalled, never replaced). Prepared here by benchmarks/gpu/prepare.sh; writes every result under
# $OUT. Each step has its own time limit so one slow step cannot eat the others' (budget: about 8 minutes).
#   1. install the carried wheels, extract the data (setup.sh)
#   2. the device, torch and CUDA versions (every GPU number is read against them)
#   3. pytest -m cuda: each engine on CUDA against the CPU (tests/test_cuda.py)
#   4. every notebook's smoke tier with device auto, under nbval
#   5. the benchmarks with --device cuda, each printing its ratio against the naive way
set -uo pipefail
source benchmarks/gpu/setup.sh
step env 30 bash -c 'nvidia-smi; python3 -c "import torch; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name())"'
step cuda_tests 150 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py
step smoke 240 python3 -m pytest -q --nbval-lax -p no:cacheprovider notebooks
step inversion 60 python3 benchmarks/inversion_speed.py --device cuda --victims 256 --iterations 50
step fedavg 60 python3 benchmarks/fedavg_speed.py --device cuda --rounds 3 --repeats 1
step dp 60 python3 benchmarks/dp_overhead.py --device cuda --models cnn tanhnet resnet9 --batch 256 --samples 2048
tail -n 3 "$OUT"/*.txt
