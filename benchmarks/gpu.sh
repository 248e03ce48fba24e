#!/usr/bin/env bash
# Training and scoring throughput on every GPU of this machine, in one go:
#   1. writes synthetic 30-second spectrograms (128 x 1292) with the spectrogram job's
#      own writer to local disk (DIR, kept for a rerun);
#   2. trains the full-size Dieleman network for STEPS steps under torchrun on every GPU
#      (DDP, nccl, bf16 autocast; COMPILE=1 adds torch.compile) and prints clips/s, the
#      share of step time spent waiting for data and the model FLOP utilisation;
#   3. scores every track on one GPU in bf16 batches, with a taste classifier as
#      training leaves one, and prints tracks/s.
# Without CUDA it runs the same on the CPU (gloo, one process unless NPROC says more);
# the test suite runs it that way with tiny sizes.
#
#   bash benchmarks/gpu.sh                           # defaults for one 8-GPU node
#   TRACKS=64 FRAMES=200 STEPS=3 BATCH=4 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")"
DIR=${DIR:-/tmp/coldstart-gpu-bench}
TRACKS=${TRACKS:-16384}
FRAMES=${FRAMES:-1292}
STEPS=${STEPS:-200}
BATCH=${BATCH:-256}
WORKERS=${WORKERS:-4}
NPROC=${NPROC:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
if [ ! -d "$DIR/run" ]; then
    python train.py --write-only "$DIR" --tracks "$TRACKS" --frames "$FRAMES"
fi
torchrun --standalone --nproc_per_node="$NPROC" train.py --shards "$DIR" --steps "$STEPS" \
    --batch-size "$BATCH" --loader-workers "$WORKERS" ${DENSE:+--dense "$DENSE"} \
    ${COMPILE:+--compile}
python score_memory.py --shards "$DIR" --full-size
