#!/usr/bin/env bash
# genrnn on one GPU, in under 8 minutes on an H100 (issue 3, item 8):
#   1. training throughput (tokens/s) of 1x64 (the lesson's one-hot model),
#      2x256, 2x512 and 3x1024 LSTMs, with fp32 (TF32) and with bf16 autocast;
#   2. tiny Shakespeare validation loss after 3 minutes of training with the
#      gpu-3m preset (nanoGPT's "baby GPT" reports 1.4697 in about 3 minutes on an A100);
#   3. sampling speed on the GPU (1, 8 and 64 parallel samples).
# Usage: bash benchmarks/gpu.sh path/to/tinyshakespeare/input.txt [OUT_DIR]
set -euo pipefail
corpus=${1:?usage: gpu.sh path/to/tinyshakespeare/input.txt [OUT_DIR]}
out=${2:-/tmp/genrnn-gpu}
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
start=$SECONDS
for precision in fp32 bf16; do
  python3 benchmarks/speed.py --device cuda --precision "$precision" --big --repeats 5 --length 300 \
    --json "$out/speed_$precision.json"
done
echo "throughput done at $((SECONDS - start)) s"
python3 -m genrnn train "$corpus" --preset gpu-3m --device cuda --sample-every 0 --out "$out/run3m" --no-progress
python3 -m genrnn eval "$out/run3m" --json | tee "$out/eval3m.json"
python3 -m genrnn sample "$out/run3m" --prompt "ROMEO:" --length 300 --temperature 0.8 --seed 0
echo "3-minute run done at $((SECONDS - start)) s"
if [ -f benchmarks/sampling.py ]; then
  python3 benchmarks/sampling.py --device cuda --repeats 3 --json "$out/sampling.json" || echo "sampling benchmark failed"
fi
echo "all done at $((SECONDS - start)) s"
