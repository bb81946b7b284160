#!/usr/bin/env bash
# Reproduce the table in benchmarks/README.md: one `dfx bench` run, all CPU backends, the Keras
# reference, end-to-end on the faces JPEGs, JSON + PNG into benchmarks/results/.
#   benchmarks/scripts/readme_bench.sh BUNDLE [IMAGES_DIR] [extra dfx bench options]
# On a GPU host the same command adds ORT CUDA and TensorRT rows (and their H2D/compute/D2H split).
set -euo pipefail
BUNDLE=${1:?usage: readme_bench.sh BUNDLE [IMAGES_DIR] [dfx bench options]}
IMAGES=${2:-$(dirname "$0")/../../../shared/data/faces}
shift $(( $# >= 2 ? 2 : 1 ))
HERE=$(cd "$(dirname "$0")/.." && pwd)
DFX=${DFX:-dfx}
mkdir -p "$HERE/results"
uptime
$DFX bench "$BUNDLE" --batch-sizes 1,8,32 --duration 8 --rounds 4 --images "$IMAGES" \
    --json "$HERE/results/bench.json" --plot "$HERE/results/bench.png" "$@"
uptime
