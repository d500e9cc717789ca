#!/usr/bin/env bash
# The reference accuracy table, sized for a 2-core CPU: every variant's probe network (16 channels) on
# the longrange probe and on digits, three seeds each, the learning rate chosen per variant and seed on
# held-out training images (--lr auto), each run to a step budget or until its training loss plateaus;
# then the probes' inference cost at 32 x 32, all into one results store. Finished runs are skipped,
# so the script may be run in several sittings (it takes hours on 2 cores).
#   bash benchmarks/accuracy.sh [reports/results.sqlite] [variants] [seeds]
set -euo pipefail
db=${1:-reports/results.sqlite}
variants=${2:-conv nonlocal gsa axial local}
seeds=${3:-0,1,2}
for v in $variants; do
  attnbench train --model "${v}_probe" --dataset longrange --steps 1500 --plateau 3 --batch 64 --lr auto \
    --seeds "$seeds" --out "runs/${v}_probe-longrange" --db "$db" --skip-finished
done
for v in $variants; do
  attnbench train --model "${v}_probe" --dataset digits --steps 600 --plateau 3 --batch 64 --lr auto \
    --seeds "$seeds" --out "runs/${v}_probe-digits" --db "$db" --skip-finished
done
attnbench run --arch probe --res 32 --batch 1 --variants "$(echo "$variants" | tr ' ' ',')" --db "$db"
