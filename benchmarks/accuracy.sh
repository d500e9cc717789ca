#!/usr/bin/env bash
# The accuracy table of the project's closing notes, on a CPU: every variant's probe network on the
# longrange probe, a small ResNet-26 (width 0.25, CIFAR stem) of every variant on digits, and the
# probes' inference cost at 32 x 32, all into one results store.
#   bash benchmarks/accuracy.sh [reports/results.sqlite] [variants]
set -euo pipefail
db=${1:-reports/results.sqlite}
variants=${2:-conv local gsa axial nonlocal}
for v in $variants; do
  attnbench train --model "${v}_probe" --dataset longrange --epochs 12 --batch 64 --lr 0.05 \
    --out "runs/${v}_probe-longrange" --db "$db"
done
for v in $variants; do
  attnbench train --model "${v}_resnet26" --width 0.25 --stem cifar --dataset digits --epochs 10 --batch 64 \
    --lr 0.05 --out "runs/${v}_resnet26-digits" --db "$db"
done
attnbench run --arch probe --res 32 --batch 1 --variants "$(echo "$variants" | tr ' ' ',')" --db "$db"
