#!/usr/bin/env bash
# Serves the embedded demo model without --gpu-budget or --max-context and checks the served context against the
# device's memory: on CUDA the context is capped where the GPU memory left after loading holds a request's KV cache
# and prompt activations (ServeCommand.CapByFreeMemory), so a request over the cap gets a 400 (context_length_exceeded)
# instead of a CUDA allocation failure, and a chat request without max_tokens (it reserves the whole served context)
# still runs. The model's max_position_embeddings is raised to 1,000,000 in a copy so the cap, not the model, binds.
#   deploy/serve-check.sh FIDDLER_COMMAND DEVICE OUTDIR     e.g.  deploy/serve-check.sh /opt/fiddler/fiddler cuda $OUT/results
# Exit 0 when every check passed; prints one line per check.
set -uo pipefail
fiddler=$1; device=$2; out=$3
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/serve-lib.sh
. "$root/deploy/serve-lib.sh"
py=${PYTHON:-python3}
tmp=$(mktemp -d)
model=$tmp/serve-model
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
cp -r "$root/Fiddler.Host/DefaultModel/model" "$model"
"$py" - "$model/config.json" <<'EOF'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c["max_position_embeddings"] = 1_000_000; json.dump(c, open(p, "w"), indent=2)
EOF
mkdir -p "$out"
# shellcheck disable=SC2086 # fiddler may be "dotnet path/fiddler.dll"
$fiddler serve --model "$model" --device "$device" --port 0 --grpc-port -1 > "$out/serve.out" 2> "$out/serve.err" &
pid=$!
url=$(serve_url "$out/serve.out" $pid)
if [ -z "$url" ]; then
  echo "FAIL serve did not start"; tail -20 "$out/serve.err"; exit 1
fi
head -1 "$out/serve.out"
grep -m1 "context capped" "$out/serve.err" || echo "(no cap printed)"
# HTTP through python's urllib (GPU hosts may lack curl): http METHOD URL [BODY [OUTFILE [TIMEOUT]]] prints the status.
http() {
  "$py" - "$@" <<'PYEOF'
import sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 and sys.argv[3] else None
out = sys.argv[4] if len(sys.argv) > 4 else None
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 60
req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=timeout) as r: status, data = r.status, r.read()
except urllib.error.HTTPError as e: status, data = e.code, e.read()
except Exception as e: status, data = 0, str(e).encode()
if out: open(out, "wb").write(data)
else: sys.stdout.write(data.decode(errors="replace") + "\n")
print(status)
PYEOF
}
ctx=$(http GET "$url/v1/models" "" "$out/models.json" >/dev/null; "$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"][0]["max_model_len"])' "$out/models.json")
echo "served context: $ctx of the model's 1000000"
if ! [[ $ctx =~ ^[0-9]+$ ]]; then echo "FAIL /v1/models gave no context length"; exit 1; fi
if [ "$device" != cpu ] && [ "$ctx" -ge 1000000 ]; then echo "FAIL the served context is not capped on $device"; fail=1; fi
post() { http POST "$url/v1/$4" "$2" "$out/$1.json" "${3:-60}"; }
check "short completion" "$(post small '{"model":"serve-model","prompt":"The meaning of life is","max_tokens":8}' 60 completions)" 200
check "max_tokens = the served context (prompt + completion over it)" \
  "$(post over "{\"model\":\"serve-model\",\"prompt\":\"Hello\",\"max_tokens\":$ctx}" 60 completions)" 400
check "its error code" "$(grep -o '"code":"[a-z_]*"' "$out/over.json" | head -1)" '"code":"context_length_exceeded"'
check "chat without max_tokens (reserves the whole served context)" \
  "$(post chat '{"model":"serve-model","messages":[{"role":"user","content":"Hi"}]}' 120 chat/completions)" 200
check "health after" "$(http GET "$url/health" "" "$out/health.txt")" 200
check "short completion after" "$(post again '{"model":"serve-model","prompt":"Once upon a time","max_tokens":8}' 60 completions)" 200
kill -TERM $pid
for _ in $(seq 1 120); do kill -0 $pid 2>/dev/null || break; sleep 0.5; done # the drain: nothing is in flight
if kill -0 $pid 2>/dev/null; then echo "FAIL serve still running 60 s after SIGTERM"; fail=1; else
  wait $pid; check "exit status after SIGTERM" "$?" 0
  check "drained and stopped" "$(grep -c '^fiddler: stopped' "$out/serve.err")" 1
fi
pid=""
if [ "$device" != cpu ] && ! grep -q "context capped" "$out/serve.err"; then
  echo "FAIL no context cap printed on $device"; fail=1
fi
exit $fail
