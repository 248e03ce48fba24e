#!/usr/bin/env bash
# Training on a GPU cluster: run this same command on every node. torchrun's c10d
# rendezvous at RDZV_ENDPOINT (host:port of any one node, reachable from all) joins
# the nodes into one job of NNODES x GPUS_PER_NODE ranks; each rank streams its own
# share of the shards (nccl, bf16 autocast). A node that dies is restarted up to three
# times and resumes from the snapshot, which must be on storage every node sees.
#
#   NNODES=4 RDZV_ENDPOINT=trainer-0:29400 RUN=/data/runs/backfill MELS=/data/mels/<hash> \
#       ALS=/data/runs/backfill/als-<fp> deploy/train-multinode.sh
set -euo pipefail
: "${NNODES:?number of nodes}" "${RDZV_ENDPOINT:?host:port of the rendezvous}"
: "${RUN:?run directory}" "${MELS:?spectrogram directory of one parameter set}" "${ALS:?ALS run}"
exec torchrun --nnodes="$NNODES" --nproc_per_node="${GPUS_PER_NODE:-gpu}" \
    --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="${RDZV_ID:-coldstart-train}" \
    --max-restarts=3 -m model.train --mels "$MELS" \
    --item-factors "$ALS/item_factors" --user-factors "$ALS/user_factors" \
    --plays "${PLAYS:-/data/plays.parquet}" --out "$RUN/model.pt" \
    --snapshot "$RUN/model.snapshot" --tensorboard "$RUN/model.tensorboard"
