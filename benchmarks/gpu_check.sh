#!/usr/bin/env bash
# A short GPU check of genrnn (about 4 minutes on one H100): training speed with
# fp32 and bf16 autocast, a 60 s training run, evaluation, batched sampling, and
# a run killed with SIGKILL and resumed on CUDA.
# Usage: bash benchmarks/gpu_check.sh CORPUS_FILE OUT_DIR
set -euo pipefail
corpus=${1:?corpus file, e.g. tinyshakespeare/input.txt}
out=${2:-/tmp/genrnn-gpu}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 benchmarks/speed.py --device cuda --precision bf16 --big --repeats 5 --length 300 --json "$out/speed_bf16.json"
python3 benchmarks/speed.py --device cuda --precision fp32 --big --repeats 5 --length 300 --json "$out/speed_fp32.json"
# 60 s of a 2x512 LSTM on CUDA with the default precision
python3 -m genrnn train "$corpus" --time 60s --hidden-size 512 --batch-size 128 --seq-len 128 \
  --dropout 0.1 --eval-every 250 --sample-every 0 --out "$out/run" --no-progress
python3 -m genrnn eval "$out/run" --json
python3 -m genrnn sample "$out/run" --prompt "ROMEO:" -n 64 --length 200 --seed 0 --json > "$out/samples.jsonl"
head -c 600 "$out/samples.jsonl"; echo
# resume on CUDA: a run killed (-9) mid-way and resumed vs one that never stopped
args=("$corpus" --max-steps 2500 --save-every 50 --eval-every 500 --sample-every 0 -q)
python3 -m genrnn train "${args[@]}" --out "$out/full"
timeout -s KILL 20 python3 -m genrnn train "${args[@]}" --out "$out/part" || echo "killed (status $?)"
python3 -c "import torch; print('killed at step', torch.load('$out/part/resume.pt', weights_only=True)['progress']['step'])"
python3 -m genrnn train --resume "$out/part" -q
python3 - "$out" <<'PY'
import sys, torch
a = torch.load(f"{sys.argv[1]}/full/resume.pt", weights_only=True)["model"]
b = torch.load(f"{sys.argv[1]}/part/resume.pt", weights_only=True)["model"]
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"resume on CUDA: max weight difference {diff:.3g}")
PY
