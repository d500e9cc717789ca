#!/usr/bin/env bash
# The GPU checks in one run: the gpu-marked tests, then module- and model-scope sweeps on CUDA.
# Writes its logs and the results store under $OUT (default /tmp/gpu-checks).
#   bash benchmarks/gpu_checks.sh
set -uo pipefail
out=${OUT:-/tmp/gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/pytest.txt"
python3 -m attnbench run --scope module --variants gsa,local,nonlocal,axial,conv --res 16,32,64,128 --dim 64 \
  --device cuda --db "$out/gpu.sqlite" --min-run-time 0.2 2>&1 | tee "$out/module.txt"
python3 -m attnbench run --variants gsa,local,nonlocal,axial,conv --res 224 --batch 8 --dtype fp32,bf16 \
  --device cuda --db "$out/gpu.sqlite" --min-run-time 0.5 2>&1 | tee "$out/model.txt"
