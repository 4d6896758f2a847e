#!/usr/bin/env bash
# GPU checks, in one short run: presets in fp32 and bf16 with host synchronisation forbidden on
# non-logging steps (bench/gpu_check.py), then DDP and FSDP on every GPU present, then one CLI run.
# Run from the repository root on a machine with CUDA, after the README's set-up (any torch build
# with CUDA will do).
set -uo pipefail
cd "$(dirname "$0")/.."
export MLFLOW_LOGGING_LEVEL=WARNING PYTHONUNBUFFERED=1
out=${OUT:-/tmp/runner-gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv || exit 1
status=0
python3 bench/gpu_check.py || status=1
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  for strategy in ddp fsdp; do
    start=$(date +%s.%N)
    python3 -m torch.distributed.run --standalone --nproc_per_node="$gpus" -m runner experiment=char_gpt \
      train.strategy=$strategy train.precision=bf16 train.epochs=1 data.steps_per_epoch=200 train.progress=quiet \
      hydra.run.dir="$out/$strategy" tracking.uri="sqlite:///$out/mlflow.db" checkpoint.register=false \
      > "$out/$strategy.log" 2>&1 || status=1
    end=$(date +%s.%N)
    echo "$strategy on $gpus GPUs: $(tail -n 5 "$out/$strategy.log" | grep -E '^run|error' | head -1)  ($(echo "$end - $start" | bc) s)"
  done
else
  echo "one GPU: DDP and FSDP need two or more (skipped)"
fi
start=$(date +%s.%N)
python3 -m runner experiment=char_gpt train.precision=bf16 train.epochs=2 train.progress=quiet \
  hydra.run.dir="$out/cli" tracking.uri="sqlite:///$out/mlflow.db" > "$out/cli.log" 2>&1 || status=1
end=$(date +%s.%N)
echo "CLI char_gpt bf16, 2 epochs: $(grep -E '^run|error' "$out/cli.log" | head -1)  ($(echo "$end - $start" | bc) s)"
exit $status
