#!/usr/bin/env bash
# Multi-GPU training with torchrun: scripts/dist_train.sh NUM_GPUS --cfg_file cfgs/kitti_models/second_gciou.yaml [args]
# --batch_size is the total over all GPUs (as in OpenPCDet). Set MASTER_PORT to run two jobs on one machine.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 NUM_GPUS --cfg_file CFG [tools/train.py args ...]" >&2
    exit 2
fi
NUM_GPUS=$1
shift
cd "$(dirname "$0")/.."
exec torchrun --nproc_per_node="${NUM_GPUS}" --master_port="${MASTER_PORT:-29500}" \
    tools/train.py --launcher pytorch "$@"
