#!/usr/bin/env bash
# Builds the training corpus of the default model on a Debian machine (needs apt and python3, nothing else):
#   Fiddler.Host/DefaultModel/build_corpus.sh [OUT]        (default OUT: .corpus/fortunes.txt, git-ignored)
# The text is Debian's fortune cookie files (packages fortunes and fortunes-min), one fortune per paragraph;
# make_default_model.py --build-corpus-from-fortunes documents the cleaning. Carry .corpus/ to the GPU machine.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$repo/.corpus/fortunes.txt}"
if [ ! -d /usr/share/games/fortunes ] || [ ! -f /usr/share/games/fortunes/fortunes ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes fortunes-min >/dev/null
  else
    echo "install the Debian packages 'fortunes' and 'fortunes-min' first" >&2
    exit 1
  fi
fi
mkdir -p "$(dirname "$out")"
python3 "$here/make_default_model.py" --build-corpus-from-fortunes /usr/share/games/fortunes --corpus-out "$out"
dpkg-query -W -f='${Package} ${Version}\n' fortunes fortunes-min 2>/dev/null || true
