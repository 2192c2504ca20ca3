#!/usr/bin/env bash
# One device call of a session: unpack the bundle, then run the steps named in STEPS, each under its own timeout,
# logs and JSON under $OUT/results, packed into $OUT/results.tgz at the end (the device tool returns ≤ 8 files).
#   STEPS="verify decode b78 b24" SPINS="0 200" deploy/gpu-call.sh
# verify: HF parity + every offload plan on CUDA; decode: bench-decode (4 all-GPU layers) per SPINS;
# b78/b48/b24: fiddler bench at that budget per SPINS (extra flags: BENCH_FLAGS; its limit: BENCH_TIMEOUT s, default 200); seed24/seed48/seed78: the seed's
# algorithm (bench/seed_baseline.py) at that budget, whose JSON later benches at that budget compare against.
# A bench step may name a variant: b78+one runs with the extra flags in $FLAGS_one (e.g. FLAGS_one="--staging-slots 1")
# and the environment assignments in $ENV_one (e.g. ENV_one="OMP_WAIT_POLICY=PASSIVE"),
# so alternating variants (b78 b78+one b78 b78+one) run in one call. SPINS lists --readback-spin-us values to run each
# bench step with ("default": the flag left out). A variant cannot repeat an option already given
# (BENCH_FLAGS, or --readback-spin-us unless SPINS=default): the CLI refuses a repeated option and the step prints FAILED. accelN: Hugging Face accelerate's offload at N GiB
# (the same script, --mode accelerate, a truncated model scaled to 32 layers); cpuk: the CPU expert kernel's GB/s
# beside this host's DRAM read bandwidth (bench-cpu-expert, extra flags: CPUK_FLAGS, limit CPUK_TIMEOUT s, log lines shown: CPUK_TAIL); longN: prompts of ${LONG_TOKENS:-4096} tokens (a comma
# list runs each, in that order) and 8 new tokens at N GiB (the placement reserves the longest; reports each TTFT and
# the GPU memory held after each prefill); fit: a budget above the
# card and the full model without a budget must stop before loading with a clear error; serve: fiddler serve on CUDA without
# a budget or --max-context caps the served context by the GPU memory left (deploy/serve-check.sh); servewarm: fiddler serve
# with a budget runs its start-up warm-up before listening and leaves it out of /metrics (deploy/serve-warmup-check.sh); selftest: fiddler cuda-selftest (streams,
# events, staging, the host signal and the latencies of a layer's hand-off); host: what the lent machine is (CPU model,
# sockets, cores and caches as the guest sees them, hypervisor, memory, the GPU's PCIe link) into host.log.
set -uo pipefail
for step in ${STEPS:-verify}; do # every step checked before anything runs
  [[ $step =~ ^(host|verify|selftest|serve|servewarm|fit|decode|cpuk|seed[0-9]+|accel[0-9]+|long[0-9]+|b[0-9]+(\+[A-Za-z0-9_]+)?)$ ]] || { echo "unknown step '$step' (host, verify, selftest, serve, servewarm, fit, decode, cpuk, seedN, accelN, longN, bN or bN+variant with N whole GiB)" >&2; exit 2; }
  if [[ $step == *+* ]]; then v="FLAGS_${step#*+}"; e="ENV_${step#*+}"; [ -n "${!v:-}${!e:-}" ] || { echo "step '$step': \$$v and \$$e are empty" >&2; exit 2; }
    for word in ${!e:-}; do [[ $word =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "step '$step': \$$e: '$word' is not NAME=VALUE" >&2; exit 2; }; done; fi
done
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$root/gpu-out}; res="$OUT/results"; mkdir -p "$res"
py=${PYTHON:-/opt/torch/.venv/bin/python}
mkdir -p /opt/fiddler && tar -xJf "$root/artifacts/fiddler-bundle.tar.xz" -C /opt/fiddler
f=/opt/fiddler/fiddler
# The shipped latency models of this card (h100-…, h200-…), when there are any; else the bench calibrates on first use.
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -o -i -m1 'H[0-9]\{3\}' | tr 'H' 'h')
shipped="$root/bench/profiles/${card:-none}-mixtral-8x7b-bf16.json"
if [ -f "$shipped" ]; then cp "$shipped" "$res/profile.json"; else echo "no shipped profile for '${card:-unknown card}': the first bench calibrates"; fi
exec > >(tee -a "$res/call.log") 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader; date -u; uptime
echo "THP enabled: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null); defrag: $(cat /sys/kernel/mm/transparent_hugepage/defrag 2>/dev/null)"
# SETTLE=1: before each bench or seed run, write back dirty pages and compact memory (each run frees ~70 GB of
# page-locked memory). Runs still drift within a call: on a freshly started machine the first 24 GiB run was the
# fastest (calls 4 and 7 of 2026-11-27 session 4), in calls 1-3 the slowest; compare variants in alternating order.
settle() { [ "${SETTLE:-0}" = 1 ] || return 0; sync; echo 1 > /proc/sys/vm/compact_memory 2>/dev/null; sleep 2; echo "settled, load $(cut -d' ' -f1-3 /proc/loadavg)"; }
for step in ${STEPS:-verify}; do
  echo "=== $step $(date -u +%H:%M:%S)"
  case $step in
    host)   { lscpu; echo; grep -m1 MemTotal /proc/meminfo; echo "virt: $(systemd-detect-virt 2>/dev/null || echo unknown)"
              nvidia-smi --query-gpu=name,pcie.link.gen.current,pcie.link.width.current,memory.total --format=csv
              nvidia-smi topo -m; } > "$res/host.log" 2>&1
            grep -E "Model name|Socket|Core|Thread|L3|NUMA node0|Hypervisor|MemTotal|virt:" "$res/host.log" | tr -s ' ' ;;
    verify) timeout 150 $f verify --fixtures "$root/Fiddler.Tests/Fixtures" --device cuda --plans > "$res/verify.log" 2>&1
            echo "verify rc=$?"; grep -E "plans|PASS|FAIL|pass|fail" "$res/verify.log" | tail -5 ;;
    decode) for s in ${SPINS:-default}; do
              spinflag=(--readback-spin-us "$s"); [ "$s" = default ] && spinflag=()
              timeout 90 $f bench-decode --config mixtral-8x7b --layers 4 --device cuda --prompt-tokens 16 --new-tokens 64 \
                "${spinflag[@]}" > "$res/decode-spin$s.log" 2>&1; echo "spin $s: $(grep -i -m2 'step\|tok/s' "$res/decode-spin$s.log" | tr '\n' ' ')"
            done ;;
    # shellcheck disable=SC2086 # CPUK_FLAGS is a list of flags
    cpuk)   timeout "${CPUK_TIMEOUT:-120}" $f bench-cpu-expert ${CPUK_FLAGS:-} > "$res/cpu-expert.log" 2>&1; echo "cpuk rc=$?"; tail -"${CPUK_TAIL:-12}" "$res/cpu-expert.log" ;;
    serve)  PYTHON="$py" timeout 300 "$root/deploy/serve-check.sh" "$f" cuda "$res/serve"; echo "serve check rc=$?" ;;
    servewarm) PYTHON="$py" timeout 300 "$root/deploy/serve-warmup-check.sh" "$f" cuda "$res/servewarm"; echo "serve warm-up check rc=$?" ;;
    selftest) timeout 120 $f cuda-selftest > "$res/selftest.log" 2>&1; echo "selftest rc=$?"; grep -E "µs|FAIL" "$res/selftest.log" | tail -8 ;;
    fit)    k=0
            for args in "--gpu-budget 200GiB" ""; do
              k=$((k + 1)); SECONDS=0; log="$res/fit-$k.log"
              # shellcheck disable=SC2086 # args is a list of flags
              timeout 120 $f bench --config mixtral-8x7b --dummy-weights $args --prompt-tokens 16 --new-tokens 4 --out "$res" > "$log" 2>&1
              echo "fit '${args:-no budget}': rc=$? after ${SECONDS} s: $(grep -m1 -i "error\|budget" "$log" | cut -c1-300)"
            done ;;
    long*)  b=${step#long}; n=${LONG_TOKENS:-4096}; log="$res/bench-${b}gib-long${n//,/-}-$(date +%H%M%S).log"; settle
            timeout 300 $f bench --config mixtral-8x7b --dummy-weights --gpu-budget "${b}GiB" --prompt-tokens "$n" --new-tokens 8 \
              --out "$res" --profile "$res/profile.json" > "$log" 2>&1 || echo "FAILED: long $n at $b GiB"
            json=$(sed -n 's/^wrote \(.*\.json\)$/\1/p' "$log" | tail -1)
            echo "budget ${b} GiB, prompts of $n tokens: $([ -n "$json" ] && "$py" -c 'import json,sys
j=json.load(open(sys.argv[1]))
print("TTFT", j["ttft_s"], "s; GPU memory", j.get("gpu_memory_used_gib"), "GiB, at start", j.get("gpu_memory_at_start_gib"), "after each prefill", j.get("gpu_memory_after_prefill_gib"))' "$json" 2>&1)" ;;
    accel*) b=${step#accel}; settle; timeout 240 "$py" "$root/bench/seed_baseline.py" --mode accelerate --gpu-budget-gib "$b" --out "$res/accel-$b.json" 2>&1 | tail -2 ;;
    seed*)  b=${step#seed}; settle; timeout 200 "$py" "$root/bench/seed_baseline.py" --gpu-budget-gib "$b" --new-tokens 32 --out "$res/seed-$b.json" | tail -2 ;;
    b*)     b=${step#b}; variant=""; extra=""
            envs=()
            if [[ $b == *+* ]]; then variant=${b#*+}; b=${b%%+*}; v="FLAGS_$variant"; extra=${!v:-}; e="ENV_$variant"; read -r -a envs <<< "${!e:-}"; fi
            base=(); [ -f "$res/seed-$b.json" ] && base=(--baseline "$res/seed-$b.json")
            for s in ${SPINS:-default}; do
              log="$res/bench-${b}gib${variant:+-$variant}-spin$s-$(date +%H%M%S).log"; settle
              # shellcheck disable=SC2086 # BENCH_FLAGS is a list of flags
              spinflag=(--readback-spin-us "$s"); [ "$s" = default ] && spinflag=()
              timeout "${BENCH_TIMEOUT:-200}" env "${envs[@]}" $f bench --config mixtral-8x7b --dummy-weights --gpu-budget "${b}GiB" --prompt-tokens 16,128,512 \
                --new-tokens 32 --out "$res" --profile "$res/profile.json" "${base[@]}" "${spinflag[@]}" ${BENCH_FLAGS:-} $extra > "$log" 2>&1 || echo "FAILED: $b${variant:++$variant} spin $s"
              tok=$(grep -m1 '"decode_tok_s"' "$log" | tr -dc '0-9.')
              ttft=$(grep -A3 '"ttft_s"' "$log" | sed -n 's/.*": \([0-9.]*\),\{0,1\}$/\1/p' | paste -sd/ -)
              huge=$(grep -m1 '"host_huge_pages_gib"' "$log" | tr -dc '0-9.')
              json=$(sed -n 's/^wrote \(.*\.json\)$/\1/p' "$log" | tail -1)
              more=$([ -n "$json" ] && "$py" "$root/deploy/bench_summary.py" "$json" 2>&1)
              echo "budget ${b} GiB${variant:+ +$variant ($extra${envs[*]:+ ${envs[*]}})} spin $s: decode ${tok} tok/s, TTFT 16/128/512 ${ttft} s, host memory in huge pages ${huge:-?} GiB; $more"
              grep -m1 "placement by read speed" "$log" | sed 's/^/  /'
            done ;;
  esac
done
# The latency models the benches planned with: the shipped file, or a recalibration when its key (CPU, workers, kernel
# settings, GPU, model) did not match. Only a profile keyed by the default kernel settings should replace the shipped one.
"$py" -c 'import json,sys; k=json.load(open(sys.argv[1]))["key"]; print("profile.json key: cpu_threads", k.get("cpu_threads"), "cpu_kernel", k.get("cpu_kernel"))' "$res/profile.json" 2>/dev/null
date -u
tar -czf "$OUT/results.tgz" -C "$OUT" results
