#!/usr/bin/env bash
# GPU check for the day a GPU is lent: gpu-marked tests, 50 training steps of PointPillars and PointPillars-GCIoU
# through tools/train.py, then step time, box-loss share and peak memory of both (pcdet_gciou.openpcdet.gpu_check).
# Needs only pip packages (a CUDA torch and the matching spconv-cuXXX wheel) and an OpenPCDet tree from
# `python -m pcdet_gciou.openpcdet.get` (unbuilt: the portable layer stands in for the compiled extensions).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
DATA="$REPO/../shared/data/kitti_mini"
OPENPCDET=""
STEPS=50
OUT="$REPO/output/gpu_check"
CONFIGS=(pointpillar pointpillar_gciou)
# The mini frames' GT database is too small for gt_sampling; everything else is the stock config.
NO_GT_SAMPLING=(DATA_CONFIG.DATA_AUGMENTOR.DISABLE_AUG_LIST "['gt_sampling']")

usage() {
    cat <<EOF
usage: scripts/gpu_check.sh [--data DIR] [--openpcdet DIR] [--steps N] [--out DIR] [-h]

On a CUDA machine: runs the gpu-marked tests, trains $STEPS steps of ${CONFIGS[*]} on the KITTI-layout
folder with tools/train.py, and prints each config's step time, box-loss share of the step and peak memory.

  --data DIR       KITTI-layout folder (ImageSets/, training/), read only (default: ../shared/data/kitti_mini)
  --openpcdet DIR  OpenPCDet tree from 'python -m pcdet_gciou.openpcdet.get' (default: pcdet already importable)
  --steps N        training steps per config (default: 50)
  --out DIR        where the prepared tree, runs, logs and gpu_check.json go (default: output/gpu_check)
  -h, --help       this help
Environment: PYTHON (default: python).
EOF
}

die() {
    echo "gpu_check.sh: error: $*" >&2
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --data | --openpcdet | --steps | --out)
            [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see -h)"
            case "$1" in
                --data) DATA="$2" ;;
                --openpcdet) OPENPCDET="$2" ;;
                --steps) STEPS="$2" ;;
                --out) OUT="$2" ;;
            esac
            shift 2 ;;
        *) die "unknown argument '$1' (see -h)" ;;
    esac
done

[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || die "--steps must be a positive integer, got '$STEPS'"
[[ -d "$DATA/training/velodyne" && -d "$DATA/ImageSets" ]] ||
    die "--data $DATA is not a KITTI-layout folder (needs ImageSets/ and training/velodyne/)"
DATA="$(cd "$DATA" && pwd)"
if [[ -n "$OPENPCDET" ]]; then
    [[ -f "$OPENPCDET/pcdet/__init__.py" ]] ||
        die "--openpcdet $OPENPCDET holds no pcdet/ package; get one with: $PYTHON -m pcdet_gciou.openpcdet.get --dest $OPENPCDET"
    export PYTHONPATH="$(cd "$OPENPCDET" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v "$PYTHON" > /dev/null || die "no '$PYTHON' on PATH (set PYTHON=...)"
"$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null ||
    die "no CUDA device is visible (torch.cuda.is_available() is False); this check is for a GPU machine"
"$PYTHON" -c 'import spconv.pytorch' 2> /dev/null ||
    die "spconv is not importable; pip install the spconv-cuXXX wheel matching torch.version.cuda"
"$PYTHON" -c 'from pcdet_gciou.openpcdet import cpu; cpu.install("cuda"); import pcdet.datasets, pcdet.models' \
    2> /dev/null ||
    die "OpenPCDet is not importable; get it with: $PYTHON -m pcdet_gciou.openpcdet.get, then pass --openpcdet DIR"

mkdir -p "$OUT" || die "cannot create --out $OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$REPO"
START=$SECONDS
FAILED=()

step() {  # step NAME LOGFILE COMMAND...: run, log, remember failures, keep going
    local name="$1" log="$2"
    shift 2
    echo "== $name ($((SECONDS - START)) s)"
    if ! "$@" > "$log" 2>&1; then
        FAILED+=("$name (see $log)")
        tail -n 5 "$log"
    fi
}

"$PYTHON" -m pcdet_gciou.openpcdet.cpu --device cuda | tee "$OUT/portable_layer.txt"
step "gpu-marked tests" "$OUT/pytest_gpu.log" timeout 300 "$PYTHON" -m pytest -q -m gpu tests
tail -n 1 "$OUT/pytest_gpu.log"

TREE="$OUT/kitti"  # writable: prepare_kitti writes infos next to the (symlinked, read-only) frames
mkdir -p "$TREE"
for name in ImageSets training testing; do
    [[ -e "$DATA/$name" && ! -e "$TREE/$name" ]] && ln -s "$DATA/$name" "$TREE/$name"
done
step "prepare_kitti" "$OUT/prepare.log" "$PYTHON" tools/prepare_kitti.py --data_path "$TREE"

CFG_FILES=()
for cfg in "${CONFIGS[@]}"; do
    CFG_FILES+=("cfgs/kitti_models/$cfg.yaml")
    step "train $cfg, $STEPS steps" "$OUT/train_$cfg.log" timeout 300 "$PYTHON" tools/train.py \
        --cfg_file "cfgs/kitti_models/$cfg.yaml" --data_path "$TREE" --output_dir "$OUT/runs" --extra_tag gpu_check \
        --max_iters "$STEPS" --eval_interval 0 --no_progress --set "${NO_GT_SAMPLING[@]}"
done

echo "== step time, box-loss share, peak memory ($((SECONDS - START)) s)"
step "measure" "$OUT/measure.log" timeout 300 "$PYTHON" -m pcdet_gciou.openpcdet.gpu_check \
    --cfg_file "${CFG_FILES[@]}" --data_path "$TREE" --steps "$STEPS" \
    --json "$OUT/gpu_check.json" --set "${NO_GT_SAMPLING[@]}"
grep -E '\.yaml: step' "$OUT/measure.log" | tee "$OUT/summary.txt"

echo "== done in $((SECONDS - START)) s; logs in $OUT"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    printf 'FAILED: %s\n' "${FAILED[@]}" >&2
    exit 1
fi
