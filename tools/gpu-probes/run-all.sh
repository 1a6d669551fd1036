#!/usr/bin/env bash
# Read-only GPU probes, one prepared run (nothing here changes a GPU setting).
# Writes under $OUT: smi-q.txt, llm/llm_points.json, phase/{samples.csv,static.json}, contract.txt, log.txt
set -u
OUT=${OUT:-probe-out}
mkdir -p "$OUT/llm" "$OUT/phase"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")" && pwd)
{
  date -u; uname -a
  nvidia-smi -q > "$OUT/smi-q.txt" 2>&1 || echo "nvidia-smi -q failed"
  python3 -c 'import torch, pynvml; print("torch", torch.__version__)' || true
  echo "== llm_probe"; OUT="$OUT/llm" timeout 240 python3 "$here/llm_probe.py" || echo "llm_probe rc=$?"
  echo "== phase_probe"; OUT="$OUT/phase" timeout 150 python3 "$here/phase_probe.py" || echo "phase_probe rc=$?"
  echo "== contract"
  PYTHONPATH="$here/../../node-daemon:$here/../..:$here/../../testbed" timeout 60 \
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/unit/node/gpu/test_gpu_contract.py \
    > "$OUT/contract.txt" 2>&1 || echo "contract rc=$?"
  tail -5 "$OUT/contract.txt"
  date -u
} 2>&1 | tee "$OUT/log.txt"
