#!/usr/bin/env bash
# Reproduce one row of docs/results.md: fit on Amazon Beauty with early stopping on val/ndcg@10,
# test the best checkpoint under full ranking (the config's protocol), then test the same
# checkpoint under the sampled protocol: 100 uniform negatives, and 100 popularity-sampled negatives.
#   benchmarks/accuracy/run_beauty.sh ce [OUT_DIR] [extra CLI args...]
set -euo pipefail
loss=${1:?usage: run_beauty.sh bce|ce|sampled-softmax [out_dir] [extra args]}
out=${2:-runs/beauty-$loss}
shift $(( $# >= 2 ? 2 : 1 ))
repo=$(cd "$(dirname "$0")/../.." && pwd)
data=${BEAUTY:-$repo/../shared/data/beauty.txt}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
start=$(date +%s)
sasrec-lightning fit -c "$repo/configs/beauty-$loss.yaml" --data.init_args.path "$data" \
  --trainer.default_root_dir "$out" --trainer.logger.init_args.save_dir "$out" \
  --trainer.enable_progress_bar false "$@" 2>&1 | tee "$out/fit.log"
echo "fit+test wall time: $(( $(date +%s) - start )) s" | tee -a "$out/fit.log"
ckpt=$(ls -t "$out"/*/version_*/checkpoints/best-*.ckpt | head -1)
echo "best checkpoint: $ckpt" | tee -a "$out/fit.log"
# The same checkpoint under the sampled protocol. Not via `sasrec-lightning test --ckpt_path`:
# LightningCLI then takes the model hyper-parameters (evaluation.protocol) from the checkpoint.
python "$repo/benchmarks/accuracy/test_protocols.py" "$ckpt" --data "$data" \
  --protocols sampled-uniform sampled-popularity 2>"$out/test-protocols.err" | grep '^{' | tee "$out/test-protocols.jsonl"
