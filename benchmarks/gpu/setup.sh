# Sourced by the GPU scripts (check.sh, tiers.sh) in the repository root of the lent GPU machine: installs the
# carried wheels (.whl/) beside the image's torch (never replaced), checks and extracts the carried data
# (.data/), registers the Jupyter kernel, and defines `step NAME SECONDS COMMAND...` (a time-limited step whose
# output lands in $OUT/NAME.txt and whose exit code and wall time in $OUT/steps.txt).
OUT=${OUT:-/tmp/fedrepro-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed" > "$OUT/FAILED"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
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
