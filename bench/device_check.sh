#!/usr/bin/env bash
# The project's one device check (issue 12): every GPU number the README quotes comes from this script.
#
#   bash bench/device_check.sh [--weights FILE] [--out DIR] [--videos N]    # on a CUDA machine, < 8 minutes
#   bash bench/device_check.sh --dry                                        # the same steps on the CPU, tiny
#
# Steps (each one's output in OUT/, all numbers in OUT/device_check.json):
#   1. the CUDA tests (pytest -m cuda: CUDA vs CPU features, bf16 vs fp32, views on the GPU, staging,
#      a fine-tuning step with frozen batch norm);
#   2. I3D clips/s per precision and batch with peak memory (bench.bench_i3d, the pipeline's own forward);
#   3. the extraction CLI end to end at 224 px (7 views, 455x256 JPEG frames, a csv dataset of N videos)
#      with the GPU's busy fraction sampled by nvidia-smi every 250 ms;
#   4. one fine-tuning step at 224 px in bf16: seconds per step, peak memory, and the clip loader's time
#      for the same batch (bench.bench_finetune);
#   5. torchrun: one process per GPU starts and extracts; two processes on one GPU are refused.
#
# No network access is needed: --weights FILE (or AQA_WEIGHTS=FILE) points at a converted state dict
# carried in the checkout (e.g. weights/i3d_kinetics400.pt); without it the seeded random weights are
# used (speed does not depend on the weights; the tests use them anyway). PY picks the interpreter
# (default: .venv/bin/python when present, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=artifacts/device_check
WEIGHTS="${AQA_WEIGHTS:-random}"
VIDEOS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --weights) WEIGHTS="$2"; shift ;;
    --videos) VIDEOS="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "$WEIGHTS" != "random" ] && [ "$WEIGHTS" != "kinetics400" ] && [ ! -f "$WEIGHTS" ]; then
  echo "device_check.sh: weights file $WEIGHTS not found; pass --weights FILE (a converted state dict in the checkout) or leave it out for random weights" >&2
  exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; SIZE=64; NV=${VIDEOS:-4}; CROP=(--crop 64 --frame-size 80,64)
  I3D=(--size 64 --iters 1 --batch 2 --skip-unfused-cl); FT=(--size 64 --clips 2 --pairs 1 --steps 1 --precision fp32 --workers 1)
  NPROC=2
else
  DEVICE=cuda; SIZE=224; NV=${VIDEOS:-1000}; CROP=()
  I3D=(--precisions fp32,bf16,fp16 --batches 32,64,128 --iters 5); FT=(--precision bf16)
  NPROC=1
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "device_check.sh: torch sees no CUDA device here; run with --dry for the CPU rehearsal" >&2
    exit 2
  fi
fi
echo "device_check: device $DEVICE, weights $WEIGHTS, $NV videos, output $OUT"

STATUS="$OUT/steps.tsv"
: > "$STATUS"
step() {   # step NAME TIMEOUT_S COMMAND...   (records name, exit code, seconds)
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s%N)
  echo "== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local t1=$(date +%s%N)
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( (t1 - t0) / 1000000 ))" >> "$STATUS"      # milliseconds
  tail -n 4 "$OUT/$name.log"
  return 0
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" > "$OUT/env.txt" 2>&1
command -v nvidia-smi > /dev/null && nvidia-smi >> "$OUT/env.txt" 2>&1

# 1. CUDA tests (on the CPU they are all skipped: the step still shows that they collect and run)
step tests 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_extract_feed.py \
  tests/test_extract_pipeline.py tests/test_finetune_store.py --junitxml "$OUT/tests.xml"

# 2. I3D throughput per precision and batch, peak memory
step i3d 180 "$PY" -m bench.bench_i3d --device "$DEVICE" "${I3D[@]}" --json "$OUT/i3d.json"

# 3. extraction CLI end to end at 224 (dry: 64) with the GPU's busy fraction
CSV=$("$PY" -m bench.frames "$OUT/data" "$NV")
SAMPLER=""
if [ "$DEVICE" = cuda ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -i 0 -lms 250 \
    > "$OUT/gpu_util.csv" 2>/dev/null &
  SAMPLER=$!
fi
step extract 300 "$PY" -m extract features --dataset csv --root "$CSV" --out "$OUT/extract.h5" \
  --weights "$WEIGHTS" --device "$DEVICE" "${CROP[@]}" --force --no-progress
[ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null

# 4. fine-tuning step and its loader
step finetune 180 "$PY" -m bench.bench_finetune --device "$DEVICE" "${FT[@]}" --json "$OUT/finetune.json"

# 5. torchrun: one process per GPU starts and extracts; two processes on one GPU are refused
step torchrun 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m extract features \
  --dataset csv --root "$CSV" --out "$OUT/torchrun.h5" --weights "$WEIGHTS" --device "$DEVICE" "${CROP[@]}" \
  --max-videos 8 --force --no-progress
if [ "$DEVICE" = cuda ] && [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" = 1 ]; then
  step torchrun_two_on_one_gpu 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m extract \
    features --dataset csv --root "$CSV" --out "$OUT/torchrun2.h5" --weights "$WEIGHTS" --device cuda \
    --max-videos 4 --force --no-progress
fi

"$PY" -m bench.device_report "$OUT" --dry "$DRY" --device "$DEVICE" --weights "$WEIGHTS" --videos "$NV"
