#!/usr/bin/env bash
# The one prepared check for a session lent a GPU: Triton parity on CUDA (compiled, not interpreted), the two
# benchmarks in bf16 at batch 256, a short detection run and a torchrun training run. Each step's log
# goes to $OUT (default runs/gpu-check); a failing step is reported and the next one still runs.
# Run from the repository root: bash benchmarks/gpu_check.sh. It runs the checkout in place (no install): the device
# machine's python3 already holds PyTorch and Triton; PY names another interpreter.
set -uo pipefail
OUT=${OUT:-runs/gpu-check}
PY=${PY:-python3}
WORK=${WORK:-$(mktemp -d)}  # the runs' checkpoints: only the logs belong in $OUT
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
failed=0

# step NAME SECONDS COMMAND...: run COMMAND with its log in $OUT/NAME.log, stopped after SECONDS (the lease is short)
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - start)) s"
    tail -n 25 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || failed=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
step triton_parity 180 "$PY" -m tests.layers.fused._triton_parity
step attention_modules 90 "$PY" benchmarks/attention_modules.py --device cuda --dtype bf16 --batch 256
step networks 110 "$PY" benchmarks/networks.py --device cuda --dtype bf16 --batch 256 --train-batch 256 \
    --write "$OUT/networks.md"
# one process per GPU: NCCL refuses two processes on the one GPU a device machine has
step train_torchrun 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m cbam train --arch resnet18 \
    --recipe cluttered-digits-compare --data cluttered-digits --attention cbam --epochs 1 --device cuda \
    --output "$WORK/train-ddp"
step detect 60 "$PY" -m cbam detect train --recipe cluttered-digits-compare --backbone resnet18 --attention cbam \
    --data cluttered-digits --epochs 1 --device cuda --output "$WORK/detect"
exit "$failed"
