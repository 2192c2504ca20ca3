#!/usr/bin/env bash
# Serves the embedded demo model with --gpu-budget 17MiB (about a third of its experts fit; the rest stay in host memory,
# so the router runs) and checks the start-up warm-up (WarmupPlan, ServeCommand.WarmUpAsync) on that device: the warm-up line comes
# before the server listens, a request then runs, and the engine's layer-step counter on /metrics counts that request
# only (the warm-up's steps were reset, and the start-up health probe generates uncounted: 2 passes x layers for a
# 2-token completion). With --no-warmup no warm-up line is printed.
#   deploy/serve-warmup-check.sh FIDDLER_COMMAND DEVICE OUTDIR     e.g.  deploy/serve-warmup-check.sh /opt/fiddler/fiddler cuda $OUT/results
# Exit 0 when every check passed; prints one line per check.
set -uo pipefail
fiddler=$1; device=$2; out=$3
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/serve-lib.sh
. "$root/deploy/serve-lib.sh"
py=${PYTHON:-python3}
model=$root/Fiddler.Host/DefaultModel/model
mkdir -p "$out"
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null' EXIT
get() { "$py" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=60).read().decode())' "$1"; }
# POSTs JSON; prints "STATUS FINISH_REASON COMPLETION_TOKENS" ("STATUS - -" without a completion).
get_json_post() {
  "$py" - "$1" "$2" <<'PYEOF'
import json, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method="POST", headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=120) as r:
        body = json.loads(r.read().decode())
        print(r.status, body["choices"][0].get("finish_reason", "-"), body.get("usage", {}).get("completion_tokens", "-"))
except urllib.error.HTTPError as e: print(e.code, "-", "-")
PYEOF
}
layers=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$model/config.json")
for variant in warmup no-warmup; do
  flags=(); [ $variant = no-warmup ] && flags=(--no-warmup)
  # shellcheck disable=SC2086 # fiddler may be "dotnet path/fiddler.dll"
  $fiddler serve --model "$model" --device "$device" --gpu-budget 17MiB --port 0 --grpc-port -1 "${flags[@]}" \
    > "$out/serve-$variant.out" 2> "$out/serve-$variant.err" &
  pid=$!
  url=$(serve_url "$out/serve-$variant.out" $pid 240)
  if [ -z "$url" ]; then echo "FAIL $variant: serve did not start"; tail -20 "$out/serve-$variant.err"; exit 1; fi
  line=$(grep -m1 "fiddler: warm-up:" "$out/serve-$variant.err")
  echo "$variant: ${line:-(no warm-up line)}"
  if [ $variant = warmup ]; then check "warm-up line printed" "$([ -n "$line" ] && echo yes || echo no)" yes
  else check "no warm-up line with --no-warmup" "$([ -z "$line" ] && echo yes || echo no)" yes; fi
  grep -m1 "^total" "$out/serve-$variant.err"
  reply=$(get_json_post "$url/v1/completions" '{"model":"model","prompt":"Once","max_tokens":2,"temperature":0}')
  check "$variant: completion" "${reply%% *}" 200
  sleep 3 # the engine-stats poller reads every 2 s
  steps=$(get "$url/metrics" | sed -n 's/^fiddler_engine_layer_steps[a-z_]*{*[^ ]* \([0-9.e+]*\)$/\1/p' | head -1)
  echo "$variant: layer steps on /metrics after the request: ${steps:-none} (the request: ${reply#* })"
  check "$variant: /metrics has a positive layer-step count" "$("$py" -c 'import sys; print("yes" if float(sys.argv[1] or 0) > 0 else "no")' "${steps:-}" 2>/dev/null || echo no)" yes
  # Two tokens to the length limit: a prefill and one decode step, each through every layer; the start-up health
  # probe's own generation is not counted (it would add one more pass).
  if [ "${reply#* }" = "length 2" ]; then
    check "$variant: layer steps are the request's only (2 passes x $layers layers)" "$("$py" -c 'import sys; print(int(float(sys.argv[1] or 0)))' "${steps:-}" 2>/dev/null)" $((2 * layers))
  else
    echo "skipped $variant: the exact layer-step count (the completion ended '${reply#* }', not at its 2-token limit)"
  fi
  declare "steps_${variant//-/_}=${steps:-none}"
  kill -TERM $pid; wait $pid; check "$variant: exit after SIGTERM" $? 0; pid=""
done
# The same request on the same placement: with the warm-up's steps reset, both servers count the same.
check "layer steps on /metrics leave the warm-up out (with warm-up = without)" "$steps_warmup" "$steps_no_warmup"
exit $fail
