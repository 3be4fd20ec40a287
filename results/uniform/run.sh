#!/bin/sh
# The CPU-scale reproduction of issue 18 item 6 on the synthetic source (exact judge): every command
# that made results/uniform/, in order. Run from the repository root: sh results/uniform/run.sh
set -e
C="--data synthetic --size micro --seq-len 64 --seed 0 --eval-every 0"
python train.py --process uniform $C --iters 150 --out-dir out/r18/uniform
python train.py --distill dcd --teacher out/r18/uniform/ckpt.pt $C --iters 20 --eval-samples 0 --out-dir out/r18/dcd
python train.py --distill idlm --teacher out/r18/uniform/ckpt.pt $C --iters 30 --eval-samples 0 --out-dir out/r18/idlm-duo
python train.py --distill idlm --teacher out/r18/dcd/ckpt.pt $C --iters 30 --eval-samples 0 --out-dir out/r18/idlm-dcd
for S in ancestral greedy-tail; do
  python sweep.py --ckpts out/r18/uniform/ckpt.pt out/r18/dcd/ckpt.pt out/r18/idlm-duo/ckpt.pt out/r18/idlm-dcd/ckpt.pt \
    --steps 1 2 4 64 --sampler $S --judge exact --num-samples 32 --seed 0 --out-dir results/uniform/$S
done
