#!/usr/bin/env bash
# The accuracy table of the project's closing notes, sized for a 2-core CPU: every variant's probe
# network (16 channels) on the longrange probe and on digits, then the probes' inference
# cost at 32 x 32, all into one results store.
#   bash benchmarks/accuracy.sh [reports/results.sqlite] [variants]
set -euo pipefail
db=${1:-reports/results.sqlite}
variants=${2:-conv nonlocal gsa axial local}
for v in $variants; do
  attnbench train --model "${v}_probe" --dataset longrange --epochs 10 --batch 64 --lr 0.05 \
    --out "runs/${v}_probe-longrange" --db "$db"
done
for v in $variants; do
  attnbench train --model "${v}_probe" --dataset digits --epochs 6 --batch 64 --lr 0.05 \
    --out "runs/${v}_probe-digits" --db "$db"
done
attnbench run --arch probe --res 32 --batch 1 --variants "$(echo "$variants" | tr ' ' ',')" --db "$db"
