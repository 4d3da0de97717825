#!/usr/bin/env bash
# The main job end to end on the embedded default data (called by `make demo`).
# Re-runnable: it replaces its own outputs under the demo folder (default runs/demo).
set -euo pipefail
OUT=${1:-runs/demo}
PY=${PY:-.venv/bin/python}
DL="$PY -m domainlock"
mkdir -p "$OUT"

echo "== 1. the offline domains"
$DL data list
$DL data show syn --out "$OUT/syn.png" --overwrite -q
$DL data show mnistm --out "$OUT/mnistm.png" --overwrite -q

echo "== 2. the owner trains a source model on mnist (default recipe, with augmentation)"
$DL train --domain mnist --arch digitnet --out "$OUT/src-mnist" --overwrite

echo "== 3. before protection: how well it transfers to the other digit domains"
$DL eval --model "$OUT/src-mnist" --domains mnist,syn,mnistm,uci-digits

echo "== 4. protect it against syn with SA-MAP (mask pruning, source-available)"
$DL protect --method sa-map --model "$OUT/src-mnist" --source mnist --target syn \
  --eval-domains mnistm,uci-digits --out "$OUT/sa-map-mnist-syn" --overwrite

echo "== 5. ownership: protect against the owner's watermark, then verify suspects"
$DL protect --method sa-map --model "$OUT/src-mnist" --source mnist --target wm:mnist \
  --out "$OUT/owner-wm" --overwrite
echo "-- the watermark-protected model (should be flagged):"
$DL verify --model "$OUT/owner-wm" --owner-data mnist
echo "-- the unprotected source model (should not be flagged):"
$DL verify --model "$OUT/src-mnist" --owner-data mnist

echo "== 6. the benchmark: every method and the fine-tuning attack on the quick suite, this model as the source"
$DL bench --suite digits-quick --out "$OUT/bench" --source-model mnist="$OUT/src-mnist"
$DL report "$OUT/bench" --out "$OUT/bench/report" --overwrite
echo "report: $(cd "$OUT/bench/report" && pwd)/report.html"
