#!/usr/bin/env bash
# Same-call A/B of engine variants on the GPU host (the host's timing drifts ±8 % between calls, so only variants
# measured in one call are compared). Expects artifacts/fiddler-bundle.tar.xz (deploy/bundle.sh; for the device
# tool's 64 MiB limit: FIDDLER_BUNDLE_NO_DEFAULT_MODEL=1 XZ_OPT="-9e -T0" deploy/bundle.sh).
#   BUDGET=24 VARIANTS="--merge gated;--merge nonblocking;--routing whole" SEED=1 deploy/gpu-ab.sh
# Each variant is a set of extra `fiddler bench` flags; the seed baseline runs first when SEED=1.
# Results: $OUT/results/*.json and one summary line per variant in $OUT/ab.log.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$root/gpu-out}; res="$OUT/results"; mkdir -p "$res"
py=${PYTHON:-/opt/torch/.venv/bin/python}
budget=${BUDGET:-24}
mkdir -p /opt/fiddler && tar -xJf "$root/artifacts/fiddler-bundle.tar.xz" -C /opt/fiddler
f=/opt/fiddler/fiddler
# Latency models measured on a quiet H100 host (a calibration during other load misleads every run after it; the
# engine recalibrates when the file's host/model key does not match). PROFILE= (empty) calibrates afresh.
profile=${PROFILE-$root/bench/profiles/h100-mixtral-8x7b-bf16.json}
if [ -n "$profile" ] && [ -f "$profile" ]; then cp "$profile" "$res/profile.json"; fi
exec > >(tee -a "$OUT/ab.log") 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
baseline=()
if [ "${SEED:-1}" = 1 ]; then
  timeout 240 "$py" "$root/bench/seed_baseline.py" --gpu-budget-gib "$budget" --new-tokens "${NEW_TOKENS:-32}" --out "$res/seed-$budget.json" | tail -2
  baseline=(--baseline "$res/seed-$budget.json")
fi
IFS=';' read -ra variants <<< "${VARIANTS:---routing auto}"
for v in "${variants[@]}"; do
  log="$res/bench-${budget}gib-$(echo "$v" | tr -c 'A-Za-z0-9' '_').log"
  # shellcheck disable=SC2086 # a variant is a list of flags
  timeout 240 $f bench --config mixtral-8x7b --dummy-weights --gpu-budget "${budget}GiB" --prompt-tokens 16,128,512 \
    --new-tokens "${NEW_TOKENS:-32}" --out "$res" --profile "$res/profile.json" "${baseline[@]}" $v > "$log" 2>&1 || echo "FAILED: $v"
  tok=$(grep -m1 '"decode_tok_s"' "$log" | tr -dc '0-9.')
  ttft=$(grep -A3 '"ttft_s"' "$log" | sed -n 's/.*": \([0-9.]*\),\{0,1\}$/\1/p' | paste -sd/ -)
  echo "variant [$v] budget ${budget} GiB: decode ${tok} tok/s, TTFT 16/128/512 ${ttft} s"
done
