#!/usr/bin/env bash
# Regenerate the golden ARPA files of tests/test_ngram.py with KenLM's lmplz.
#
#   tools/make_kenlm_fixtures.sh     # builds lmplz first if needed (tools/build_lmplz.sh)
#
# Corpus: the first 3,000 non-blank lines of ../shared/data/tinyshakespeare/train.txt (the
# test reads the same lines; nothing of the text is committed). Output:
# tests/fixtures/kenlm/shakespeare3000.o{2,3,4,5}.arpa.gz, modified Kneser-Ney as lmplz's
# defaults (no pruning, unigrams interpolated with the uniform distribution).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LMPLZ="$("$ROOT/tools/build_lmplz.sh" | tail -n 1)"
OUT="$ROOT/tests/fixtures/kenlm"
CORPUS="$ROOT/build/kenlm/shakespeare3000.txt"
awk 'NF && n++ < 3000' "$ROOT/../shared/data/tinyshakespeare/train.txt" > "$CORPUS"
mkdir -p "$OUT"
for order in 2 3 4 5; do
  "$LMPLZ" -o "$order" -S 20% -T "$ROOT/build/kenlm" --text "$CORPUS" \
    --arpa "$ROOT/build/kenlm/o$order.arpa" 2> "$ROOT/build/kenlm/o$order.log"
  gzip -9 -n -c "$ROOT/build/kenlm/o$order.arpa" > "$OUT/shakespeare3000.o$order.arpa.gz"
done
basename "$(ls "$ROOT"/build/kenlm/kenlm-*.tar.gz)" .tar.gz > "$OUT/VERSION"  # lmplz's source
ls -l "$OUT"
