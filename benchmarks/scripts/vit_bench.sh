#!/usr/bin/env bash
# The clip_vit default's speed table (docs/benchmarks.md): one `dfx bench` run of every CPU
# backend, the seed CNN at 96 px timed beside it in the same slices, dfx scan end to end on
# 300 px face photos, and the summary of what `auto` serves against ORT fp32 and OpenVINO's own
# benchmark_app on the same file.
#   benchmarks/scripts/vit_bench.sh CLIP_BUNDLE [SEED_BUNDLE] [IMAGES_DIR] [extra dfx bench options]
# SEED_BUNDLE is made when absent (benchmarks/scripts/seed_bundle.py --size 96: random weights,
# speed only). CLIP_BUNDLE: train_recommended.sh's output, exported with --fp16 --int8.
set -euo pipefail
CLIP=${1:?usage: vit_bench.sh CLIP_BUNDLE [SEED_BUNDLE] [IMAGES_DIR] [dfx bench options]}
HERE=$(cd "$(dirname "$0")/.." && pwd)
SEED=${2:-$HERE/../bundles/seed96}
IMAGES=${3:-$HERE/../../shared/data/faces-aaf/real/aaf}
shift $(( $# >= 3 ? 3 : $# ))
DFX=${DFX:-dfx}
PYTHON=${PYTHON:-python}
[ -f "$SEED/manifest.json" ] || $PYTHON "$HERE/scripts/seed_bundle.py" "$SEED" --size 96
mkdir -p "$HERE/results"
uptime
$DFX bench "$CLIP" --batch-sizes 1,8,32 --duration 6 --rounds 3 --images "$IMAGES" --against "$SEED" \
    --json "$HERE/results/bench_clip.json" "$@"
uptime
