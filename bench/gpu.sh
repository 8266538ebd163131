#!/usr/bin/env bash
# bench/speed.py on a GPU: a 1.08 B-parameter Llama-3.2-1B-shaped model (random weights and tokens, so no hub
# and no embedded assets are needed) in bf16, batch 8 x 512 tokens, against plain PEFT LoRA under the Trainer.
#   bash bench/gpu.sh                 # on a machine with an NVIDIA GPU; about 5 minutes on an H100
#   bash bench/gpu.sh --profile xgblora peft-lora   # only: where those arms' GPU time goes
# Without arguments it then runs bench/round_memory.py: XGBLoRA's GPU memory round by round over 8 rounds,
# with stochastic-rounding merges (the default), fp32 and bf16 merge residuals, and plain bf16 adds.
# Uses $PYTHON (default python3) when it has CUDA torch, transformers, peft and accelerate (a GPU image's own
# Python usually does; `datasets` is not needed here); otherwise it sets up .venv-gpu from the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch, transformers, peft, accelerate, psutil, yaml; assert torch.cuda.is_available()" 2>/dev/null; then
    python3 -m venv .venv-gpu
    .venv-gpu/bin/pip -q install torch==2.13.0   # the registry's default build, with CUDA
    .venv-gpu/bin/pip -q install -e .
    PYTHON=.venv-gpu/bin/python
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'bench/gpu.sh needs a CUDA GPU'; print(torch.cuda.get_device_name())"
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 "$PYTHON" bench/speed.py --model random-1b --dtype bf16 --batch 8 --length 512 \
    --steps 50 --repeats 5 --out bench/results/speed-gpu.json "$@"
if [ $# -eq 0 ]; then
    PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 "$PYTHON" bench/round_memory.py --model random-1b --dtype bf16 \
        --batch 8 --length 512 --rounds 8 --out bench/results/round-memory-gpu.json
fi
