#!/usr/bin/env bash
# Full-size offloading benchmark on the GPU host, ours and the seed's algorithm side by side in one run.
# Expects the bundle at artifacts/fiddler-bundle.tar.xz. Results: $OUT/bench.log and $OUT/results.tar.gz.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$root/gpu-out}; mkdir -p "$OUT"
py=${PYTHON:-/opt/torch/.venv/bin/python}
res="$OUT/results"; mkdir -p "$res"
exec > >(tee -a "$OUT/bench.log") 2>&1
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }
budgets=${BUDGETS:-"24"}
mkdir -p /opt/fiddler && tar -xJf "$root/artifacts/fiddler-bundle.tar.xz" -C /opt/fiddler
f=/opt/fiddler/fiddler
# Latency models measured on a quiet H100 host (a calibration during other load misleads every run after it; the
# engine recalibrates when the file's host/model key does not match). PROFILE= (empty) calibrates afresh.
profile=${PROFILE-$root/bench/profiles/h100-mixtral-8x7b-bf16.json}
if [ -n "$profile" ] && [ -f "$profile" ]; then cp "$profile" "$res/profile.json"; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "${VERIFY:-0}" = 1 ]; then
  step "verify (HF parity + every offload plan) on CUDA"
  timeout 150 $f verify --fixtures "$root/Fiddler.Tests/Fixtures" --device cuda --plans || echo "VERIFY FAILED"
fi
if [ "${SELFTEST:-1}" = 1 ]; then
  step "cuda-selftest"; timeout 90 $f cuda-selftest --iterations 5 || echo "SELFTEST FAILED"
  step "bench-cpu-expert"; timeout 120 $f bench-cpu-expert --tokens 1,2,4,8,16 --iterations 10 || echo "CPU EXPERT BENCH FAILED"
fi
for b in $budgets; do
  step "seed baseline at $b GiB"
  timeout 240 "$py" "$root/bench/seed_baseline.py" --gpu-budget-gib "$b" --new-tokens "${NEW_TOKENS:-32}" --out "$res/seed-$b.json" | tail -15 || echo "SEED FAILED"
  for routing in ${ROUTINGS:-auto}; do
    step "fiddler bench at $b GiB, routing $routing"
    timeout 360 $f bench --config mixtral-8x7b --dummy-weights --gpu-budget "${b}GiB" --prompt-tokens 16,128,512 \
      --new-tokens "${NEW_TOKENS:-32}" --routing "$routing" --baseline "$res/seed-$b.json" --out "$res" \
      --profile "$res/profile.json" ${BENCH_FLAGS:-} || echo "BENCH FAILED"
  done
done
tar -C "$OUT" -czf "$OUT/results.tar.gz" results
