#!/usr/bin/env bash
# The GPU check: about 8 minutes on one GPU, one summary file. Run it in the checkout, in an environment where the
# package is installed (make setup, or pip install -e . with a CUDA build of torch):
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default results/gpu_check; the summary is OUT_DIR/gpu_check.txt)
# It measures (1) the paper-width 3D pretraining step (width 32, 32x64x64 patches, 44 classes, bf16 autocast) beside
# the data pipeline that feeds it (numpy transforms in 8 workers, and drawn in workers but applied batched on the GPU),
# (2) the self-discovery autoencoder's training at the paper's 128x128x64 input, width 32, and (3) a real run of
# `pretrain_3d` on the tiny configuration (.test/config/config.yaml) with discovery.device and pretrain.device set to
# cuda, whose logs must show the GPU in use. Each part has its own time limit and a failed part does not stop the
# others: the summary says which failed and why.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/results/gpu_check}" && cd "${1:-$repo/results/gpu_check}" && pwd)
summary=$out/gpu_check.txt
python=${PYTHON:-python3}
device=${DEVICE:-cuda}  # DEVICE=cpu runs the same check on the CPU, for comparison
export PYTHONUNBUFFERED=1 repo python device
cd "$repo" || exit 1

part() {  # part NAME SECONDS COMMAND...: run one measurement, its output into the summary, a failure named
    local name=$1 limit=$2
    shift 2
    echo "## $name"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep -v -e '^\s*$' -e 'it/s\]' -e 's/it\]' -e 'epoch/s' | tail -n 40
    local rc=${PIPESTATUS[0]}
    echo "-> $name: $([ "$rc" = 0 ] && echo ok || echo "FAILED (exit $rc$([ "$rc" = 124 ] && echo ", over ${limit} s"))")," \
        "$((SECONDS - start)) s"
}

workflow_run() {  # the tiny pretrain_3d with every stage on cuda; prints where each training job ran
    local work
    work=$(mktemp -d)
    printf 'discovery: {device: %s}\npretrain: {device: %s}\n' "$device" "$device" >"$work/cuda.yaml"
    "$python" -m snakemake -s "$repo/Snakefile" --cores 8 --resources gpu=1 pretrain_3d --directory "$work" \
        --configfile "$repo/.test/config/config.yaml" "$work/cuda.yaml" || return 1
    grep -h -i -e "device" -e "warning" "$work"/results/logs/autoencoder/ct.log "$work"/results/logs/embed/ct.log \
        "$work"/results/logs/pretrain/ct/*.log | sort | uniq -c | head -n 20
    [ "$device" = cpu ] || ! grep -q -i -e "device cpu" -e "embedding on cpu" "$work"/results/logs/autoencoder/ct.log \
        "$work"/results/logs/embed/ct.log "$work"/results/logs/pretrain/ct/*.log
}
export -f workflow_run

{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: none"
    "$python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'available:',
      torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    part "pretraining step and data pipeline (paper width)" 200 \
        "$python" benchmarks/pretrain.py --device "$device" --width 32 --shape 32 64 64 --batch 16 --steps 20 \
        --workers 8 --batches 40
    part "autoencoder at 128x128x64 (paper width)" 120 \
        "$python" benchmarks/autoencoder.py --device "$device" --shape 64 128 128 --width 32 --batch 4 --images 16
    part "pretrain_3d, tiny config, device $device" 180 bash -c workflow_run
} 2>&1 | tee "$summary"
echo "summary: $summary"
