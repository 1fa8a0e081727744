#!/usr/bin/env bash
# Train three anomaly-detector sizes side by side on one GPU from a training bundle
# (benchmarks/anomaly_train.py; the bundle comes from anomaly_benchmark.py --export-training).
# Run from the repository root: bash benchmarks/anomaly_train_gpu.sh BUNDLE OUT_DIR [MINUTES]
# Each model is written to OUT_DIR/<name>/ and packed as OUT_DIR/<name>.tar with its log.
set -euo pipefail
bundle=$1
out=$2
minutes=${3:-6.5}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
python3 -c "import torch, neurocast.anomaly; assert torch.cuda.is_available(), 'no GPU'; print(torch.__version__, torch.cuda.get_device_name())"
declare -A sizes=([small]="32 64 64" [deep]="32 64 128" [wide]="48 96 96")
for name in "${!sizes[@]}"; do
  # shellcheck disable=SC2086
  python3 benchmarks/anomaly_train.py "$bundle" "$out/$name" --channels ${sizes[$name]} \
    --batch-size 64 --steps 30000 --max-minutes "$minutes" > "$out/$name.log" 2>&1 &
done
status=0
wait || status=$?
for name in "${!sizes[@]}"; do
  tail -n 12 "$out/$name.log"
  [ -d "$out/$name" ] && cp "$out/$name.log" "$out/$name/" && tar -C "$out" -cf "$out/$name.tar" "$name"
done
nvidia-smi --query-gpu=name,memory.used --format=csv || true
exit $status
