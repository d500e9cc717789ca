#!/usr/bin/env bash
# The reference report's CPU store, measured on one machine from one commit: every variant alone (64
# channels, batch 1) at sides 16 to 512 and at 56 x 56 in batches of 4 and 16; every variant's ResNet-50
# at 224 in batches of 1 and 8; every variant's probe network at 32 (batch 1, width 1). Forward in fp32
# on all the machine's cores, each variant's `auto` implementation, 600 s a case at most. Run it on a
# quiet machine (the store flags a timing made beside other load, but cannot undo it), into a fresh
# store, and regenerate the report (README.md, "Reports"):
#   bash benchmarks/reference.sh STORE        (e.g. /tmp/cpu.sqlite; it replaces reports/reference.sqlite once whole)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash benchmarks/reference.sh STORE (a fresh store: adding to the committed reports/reference.sqlite would mix machines and commits)" >&2; exit 2; }
db=$1
attnbench run --scope module --res 16,32,56,64,128,256,512 --batch 1 --db "$db"
attnbench run --scope module --res 56 --batch 4,16 --db "$db"
attnbench run --res 224 --batch 1,8 --db "$db"
attnbench run --arch probe --res 32 --batch 1 --db "$db"
