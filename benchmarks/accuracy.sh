#!/usr/bin/env bash
# The reference accuracy table, sized for a 2-core CPU: every variant's probe network on the longrange
# probe and on digits, its width chosen so that it has the parameters of the 16-channel conv probe
# (--match params, the closest width within 10 %), three seeds each, the learning rate chosen once per
# setup on held-out training images (--lr auto), each run to a step budget or until its training loss
# plateaus, then evaluated at sides 24, 32 (its own) and 48 (--eval-res: as trained and, where it has
# tables sized to its training map, with them interpolated); non-local twice, with the paper's
# zero-initialised output scale and with it started at 1; all into one results store. Its cost columns
# are the trained networks' parameters and MACs (inference latency is measured by `attnbench run`, at
# width 1, which only the conv probe is trained at). Finished runs are skipped (and their missing
# evaluations made), so the script may be run in several sittings; benchmarks/probe_steps.py says what
# each probe costs here. A run (or learning-rate search) that a sitting left unfinished continues from
# its last epoch (--continue).
# A run that diverges (train exits 1) is stored as diverged and the table goes on with the next setup; the
# script then exits 1 at its end. Any other failure (bad input: 2, a signal) stops it there.
#   bash benchmarks/accuracy.sh STORE [variants] [seeds]   (a fresh store, e.g. /tmp/accuracy.sqlite, or the one
#   an earlier sitting of the same commit wrote: reports/accuracy.sqlite is another commit's table)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash benchmarks/accuracy.sh STORE [variants] [seeds] (a fresh store, or an earlier sitting's of this commit)" >&2; exit 2; }
db=$1
variants=${2:-conv nonlocal gsa axial local window neighborhood mhsa efficient}
seeds=${3:-0,1,2}
sides=24,32,48
budget() { case $1 in longrange) echo 1500 ;; digits) echo 600 ;; esac; }
diverged=0
train() {  # attnbench train, going on past a run that diverged
  attnbench train "$@" || { code=$?; [ "$code" -eq 1 ] || exit "$code"; diverged=1; }
}
for dataset in longrange digits; do
  for v in $variants; do
    train --model "${v}_probe" --dataset "$dataset" --steps "$(budget "$dataset")" --plateau 3 \
      --match params --batch 64 --lr auto --seeds "$seeds" --out "runs/${v}_probe-$dataset" --db "$db" \
      --skip-finished --continue --eval-res "$sides"
    if [ "$v" = nonlocal ]; then
      train --model nonlocal_probe --opt zero_init=false --dataset "$dataset" \
        --steps "$(budget "$dataset")" --plateau 3 --match params --batch 64 --lr auto --seeds "$seeds" \
        --out "runs/nonlocal_probe-scale1-$dataset" --db "$db" --skip-finished --continue \
        --eval-res "$sides"
    fi
  done
done
exit "$diverged"
