# shellcheck shell=bash
# Shared by deploy/serve-check.sh and deploy/serve-warmup-check.sh (sourced, not run).

# serve_url OUTFILE PID [TRIES]: waits, 0.5 s at a time (default 180 tries), for fiddler serve's "Listening on URL"
# line in OUTFILE; prints the URL, or nothing when the server exited first or never printed it.
serve_url() {
  local out=$1 pid=$2 tries=${3:-180} url=""
  for _ in $(seq 1 "$tries"); do
    url=$(sed -n 's/^Listening on \(http[^ ]*\) .*/\1/p' "$out" | head -1)
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "$url"
}

# check NAME GOT EXPECTED: prints one ok/FAIL line; a failure sets fail=1.
fail=0
check() { if [ "$2" = "$3" ]; then echo "ok   $1 ($2)"; else echo "FAIL $1: got $2, expected $3"; fail=1; fi; }
