#!/usr/bin/env bash
# The reference accuracy table, sized for a 2-core CPU: every variant's probe network on the longrange
# probe and on digits, its width chosen so that it has the parameters of the 16-channel conv probe
# (--match params, the closest width within 10 %), three seeds each, the learning rate chosen once per
# setup on held-out training images (--lr auto), each run to a step budget or until its training loss
# plateaus, then evaluated at sides 24, 32 (its own) and 48 (--eval-res: as trained and, where it has
# tables sized to its training map, with them interpolated); non-local twice, with the paper's
# zero-initialised output scale and with it started at 1; all into one results store. Its cost columns
# are the trained networks' parameters and MACs and, once every run has ended, the inference latency of
# each network as trained (its width and variant options, `attnbench run --width`, batch 1, 32 x 32, into
# the same store, after training so that no training process shares the CPU with the timings; run's
# networks have a 1000-class head where the trained ones have 2 or 10 classes: at most 0.3 % of a probe's
# MACs). Finished runs and measured networks are skipped (and missing evaluations made), so the script may
# be run in several sittings; benchmarks/probe_steps.py says what each probe costs here. A run (or
# learning-rate search) that a sitting left unfinished continues from its last epoch (--continue).
# A run that diverges (train exits 1) is stored as diverged, and a latency case that fails is stored as
# failed; the table goes on with the next setup and the script exits 1 at its end. Any other failure (bad
# input: 2, a signal) stops it there.
#   bash benchmarks/accuracy.sh STORE ["variant variant ..."] [seed,seed,...]   (a fresh store, e.g.
#   /tmp/accuracy.sqlite, or the one an earlier sitting of the same commit wrote: reports/accuracy.sqlite is
#   another commit's table); runs/ and its checkpoints are written in the current folder
set -euo pipefail
usage='usage: bash benchmarks/accuracy.sh STORE ["variant variant ..."] [seed,seed,...] (a fresh store, or an earlier sitting'"'"'s of this commit)'
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
db=$1
variants=${2:-conv nonlocal gsa axial local window neighborhood mhsa efficient}
case $variants in *,*) echo "variants are separated by spaces, not commas: $usage" >&2; exit 2 ;; esac
[ -n "${variants//[[:space:]]/}" ] || { echo "no variant named: $usage" >&2; exit 2; }  # " " trained nothing, then failed
for v in $variants; do  # names (attnbench list names them), not "gsa;local", which stopped the table at train
  case $v in *[!a-z0-9_]*) echo "not a variant's name: '$v' (attnbench list names them): $usage" >&2; exit 2 ;; esac
done
seeds=${3:-0,1,2}
sides=24,32,48
budget() { case $1 in longrange) echo 1500 ;; digits) echo 600 ;; esac; }
failed=0
attnbench_on() {  # attnbench, going on past a run that diverged or a case that failed (exit 1)
  attnbench "$@" || { code=$?; [ "$code" -eq 1 ] || exit "$code"; failed=1; }
}
for dataset in longrange digits; do
  for v in $variants; do
    attnbench_on train --model "${v}_probe" --dataset "$dataset" --steps "$(budget "$dataset")" --plateau 3 \
      --match params --batch 64 --lr auto --seeds "$seeds" --out "runs/${v}_probe-$dataset" --db "$db" \
      --skip-finished --continue --eval-res "$sides"
    if [ "$v" = nonlocal ]; then
      attnbench_on train --model nonlocal_probe --opt zero_init=false --dataset "$dataset" \
        --steps "$(budget "$dataset")" --plateau 3 --match params --batch 64 --lr auto --seeds "$seeds" \
        --out "runs/nonlocal_probe-scale1-$dataset" --db "$db" --skip-finished --continue \
        --eval-res "$sides"
    fi
  done
done
# every network the store holds a training run of, as trained: model, width and its options, each as --opt
nets=$(attnbench export --db "$db" --table training --columns model,width,options --format json | python3 -c '
import json, sys
for net in sorted({(r["model"], r["width"], r["options"] or "") for r in json.load(sys.stdin)}):
    print(net[0], net[1], *(f"--opt {o}" for o in net[2].split(",") if o))')
while read -r model width options; do
  [ -n "$model" ] || continue  # no training run stored
  # shellcheck disable=SC2086  # options: "--opt KEY=VALUE" words
  attnbench_on run --model "$model" --width "$width" $options --res 32 --batch 1 --db "$db" < /dev/null
done <<< "$nets"
exit "$failed"
