#!/usr/bin/env bash
# Here, with the package registries: put what the lent GPU machine lacks into two ignored folders that a
# device call carries (64 MiB in all): .whl/ (wheels of fedrepro's runtime dependencies that its image does
# not hold, for its Python 3.12) and .data/ (the checksummed CIFAR-10 and MNIST archives from ../shared/data).
# Then: run(command="bash benchmarks/gpu/check.sh", carry=[".whl", ".data"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
rm -rf .whl && "$PYTHON" -m fedrepro.wheelhouse .whl --python-version 3.12 \
  --have benchmarks/gpu/h200-packages.txt --exclude jupyterlab medmnist
rm -f .whl/fedrepro-*.whl  # the working tree travels with the call: fedrepro runs from it
mkdir -p .data && (cd ../shared/data && sha256sum --check --quiet SHA256SUMS) \
  && cp ../shared/data/{cifar10-jpg,mnist-png}.tar.gz ../shared/data/SHA256SUMS .data/
du -sh .whl .data
