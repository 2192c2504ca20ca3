#!/usr/bin/env bash
# One build-check-measure pass on a GPU host with PyTorch + transformers (the project's lent H100 machine).
# Expects the bundle at artifacts/fiddler-bundle.tar.xz (deploy/bundle.sh) and, for training the embedded default,
# the corpus at .corpus/fortunes.txt (Fiddler.Host/DefaultModel/build_corpus.sh). Everything it makes goes to
# $OUT (default ./gpu-out): log.txt plus results.tar.gz (fixtures, trained default model, JSON outputs).
# Steps are independent: one failing does not stop the others. STEPS selects a subset (default: all).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
work=$(mktemp -d)
log="$OUT/log.txt"
py=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$py" ] || py=python3
steps=${STEPS:-"bundle train fixtures verify generate bench"}
exec > >(tee -a "$log") 2>&1
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }
want() { [[ " $steps " == *" $1 "* ]]; }

step "host"; nvidia-smi -L; nproc; free -g | head -2; "$py" -c 'import torch,transformers;print(torch.__version__, transformers.__version__)'
fiddler=/opt/fiddler/fiddler
if want bundle; then
  step "unpack bundle"
  mkdir -p /opt/fiddler && tar -xJf "$root/artifacts/fiddler-bundle.tar.xz" -C /opt/fiddler && "$fiddler" --help | head -5
fi
default_dir="$work/default-model"
if want train; then
  step "train the embedded default model"
  "$py" "$root/Fiddler.Host/DefaultModel/make_default_model.py" --corpus "$root/.corpus/fortunes.txt" \
    --out "$default_dir" --minutes "${TRAIN_MINUTES:-4}" || echo "TRAIN FAILED"
else
  default_dir="$root/Fiddler.Host/DefaultModel/model"
fi
fixtures="$work/fixtures"
if want fixtures; then
  step "Hugging Face fixtures"
  "$py" "$root/Fiddler.Tests/Fixtures/make_fixtures.py" --out "$fixtures" --device cpu --tokenizer "$default_dir" || echo "FIXTURES FAILED"
else
  fixtures="$root/Fiddler.Tests/Fixtures"
fi
if want verify; then
  step "verify on CUDA"; "$fiddler" verify --fixtures "$fixtures" --device cuda || echo "VERIFY CUDA FAILED"
  step "verify on CPU (PyTorch's libtorch)"; "$fiddler" verify --fixtures "$fixtures" --device cpu || echo "VERIFY CPU FAILED"
fi
if want generate; then
  for dev in cuda cpu; do
    step "generate on $dev"
    "$fiddler" generate --model "$default_dir" --device "$dev" --prompt "The meaning of life is" --max-tokens 64 --seed 1 || echo "GENERATE $dev FAILED"
    "$fiddler" generate --model "$default_dir" --device "$dev" --prompt "Once upon a time" --max-tokens 64 --temperature 0 --json > "$work/generate-$dev.json" || echo "GENERATE JSON $dev FAILED"
  done
fi
if want bench; then
  step "bench-decode: Mixtral-8x7B shapes, 2 layers, all on the GPU"
  "$fiddler" bench-decode --config mixtral-8x7b --layers 2 --device cuda --prompt-tokens 16 --new-tokens 64 || echo "BENCH FAILED"
fi
step "pack results"
tar -C "$work" -czf "$OUT/results.tar.gz" . && ls -la "$OUT"
