#!/usr/bin/env bash
# One node of a multi-node run started with torchrun. Run it on every node, same MASTER_ADDR/PORT:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 ./scripts/torchrun_node.sh --config configs/large_scale.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 ./scripts/torchrun_node.sh --config configs/large_scale.yaml
# It runs, with GPUS_PER_NODE defaulting to the GPUs torch sees (1 without a GPU) and MAX_RESTARTS to 0:
#   torchrun --nnodes=$NNODES --nproc_per_node=$GPUS_PER_NODE --node_rank=$NODE_RANK \
#     --master_addr=$MASTER_ADDR --master_port=$MASTER_PORT --max-restarts=$MAX_RESTARTS -m ae_train fit \
#     --trainer.num_nodes=$NNODES --trainer.devices=$GPUS_PER_NODE --debug=true --resume=auto "$@"
# MAX_RESTARTS=3: when a rank dies, torchrun restarts the ranks up to 3 times; each restart resumes
# from the newest checkpoint (--resume=auto; --checkpoint.every_n_steps=N bounds what a kill costs).
# All ranks of all nodes share rank 0's log timestamp (a restart is a new one); with a shared output_dir
# every file lands in one logs/ directory, with node-local ones each node holds its own ranks' files.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
MASTER_PORT=${MASTER_PORT:-29500}
MAX_RESTARTS=${MAX_RESTARTS:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 1)')}
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" \
  --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
  --max-restarts="$MAX_RESTARTS" -m ae_train fit --trainer.num_nodes="$NNODES" --trainer.devices="$GPUS_PER_NODE" \
  --debug=true --resume=auto "$@"
