#!/usr/bin/env bash
# Train the autoencoder on every GPU of this node (2 CPU ranks over gloo where there is no GPU).
#   ./train_ae.sh                                  demo data, made under data/demo/ on first use
#   AE_DEMO_DATA=/scratch/demo ./train_ae.sh       the same, with the demo data made and read there
#   ./train_ae.sh --config configs/images_demo.yaml   conv AE on demo images, made under data/images_demo/
#   ./train_ae.sh --config configs/my.yaml --trainer.max_epochs=20
# Flags are --key=value overrides of the config (see `ae-train config --help`); later flags win.
# The console shows the log paths and key lines; everything else goes to OUTPUT_DIR/logs/.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
for a in "$@"; do  # help: usage and every key; nothing made, nothing started
  case "$a" in -h|--help) echo "usage: ./train_ae.sh [--config FILE] [--key=value ...]   (ae-train fit with --debug=true --resume=auto; the demo without --config)"; echo; exec "$PYTHON" -m ae_train fit --help ;; esac
done
args=("$@")
has_config=0
for a in "$@"; do case "$a" in --config|--config=*) has_config=1 ;; esac; done

# The image demo's shards, made once when its config is asked for.
for a in "$@"; do
  case "$a" in
    *configs/images_demo.yaml)
      if [ ! -f data/images_demo/ae_index.json ]; then
        "$PYTHON" -m ae_train make-shards --images-demo --out data/images_demo
      fi ;;
  esac
done

if [ "$has_config" = 0 ]; then
  # No config given: the demo. Its shards are made once; a user's own config never gets demo data.
  demo=${AE_DEMO_DATA:-data/demo}
  if [ ! -f "$demo/ae_index.json" ]; then
    "$PYTHON" -m ae_train make-shards --demo --out "$demo"
  fi
  shards=()  # configs/demo.yaml reads data/demo/; elsewhere, the same shards (make-shards --demo names them)
  if [ -n "${AE_DEMO_DATA:-}" ]; then
    shards=(--data.train_shards="$demo/train-{000000..000007}.tar" --data.val_shards="$demo/val-{000000..000001}.tar")
  fi
  args=(--config configs/demo.yaml "${shards[@]}" "${args[@]}")
fi

# Several nodes: run this script on each with NNODES, NODE_RANK and MASTER_ADDR (node 0) set.
nodes=()
if [ -n "${NNODES:-}" ]; then nodes=(--trainer.num_nodes="$NNODES"); fi

exec "$PYTHON" -m ae_train fit \
  --debug=true \
  --resume=auto \
  "${nodes[@]}" \
  "${args[@]}"
