#!/usr/bin/env bash
# The GPU checks in one run (at most 8 minutes on one H100 or H200): the variants' GPU goals side by
# side (benchmarks/gpu.py: one table, a store; the paper's five first, then the later four without goals,
# which its time limit may cut), the five networks x {infer, train} at 224, batch 64,
# bf16 through `attnbench run`, cold (goal: at most 90 s wall), our modules beside their peers in other
# libraries and timm's networks (where timm and NATTEN import; a missing one is a line, not a failure),
# then the gpu-marked tests. Needs attnbench's dependencies importable (pip install -e .). Writes logs and
# the store under $OUT (default /tmp/gpu-checks); the tables are printed last.
#   bash benchmarks/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's attnbench
out=${OUT:-/tmp/gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
timeout 150 python3 benchmarks/gpu.py --sections modules,networks --db "$out/gpu.sqlite" >"$out/table.txt" \
  2>"$out/progress.txt"
status=$?
tail -n 3 "$out/progress.txt"
start=$(date +%s)
timeout 110 python3 -m attnbench run --variants gsa,local,nonlocal,axial,conv --res 224 --batch 64 --dtype bf16 \
  --mode infer,train --device cuda --db "$out/networks.sqlite" --pivot >"$out/networks.txt" 2>&1
echo "networks sweep: exit $?, $(( $(date +%s) - start )) s wall, cold (goal: at most 90 s)" | tee -a "$out/networks.txt"
tail -n 14 "$out/networks.txt"
timeout 90 python3 benchmarks/gpu.py --sections peers,timm --db "$out/gpu.sqlite" >"$out/peers.txt" 2>&1
echo "peers and timm networks: exit $?" | tee -a "$out/peers.txt"
timeout 90 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py >"$out/pytest.txt" 2>&1
tail -n 15 "$out/pytest.txt"
cat "$out/table.txt" "$out/peers.txt"
exit $status
