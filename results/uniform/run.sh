#!/bin/sh
# The uniform-state family at CPU scale on the synthetic source (exact judge), L = 64: every
# command that made results/uniform/, in order. Run from the repository root: sh results/uniform/run.sh
# The teacher is the MDLM teacher's quick synthetic recipe (evaluation/reproduce.py, results/sedd) with the
# uniform process; validation every 250 steps only prints the curve.
set -e
C="--data synthetic --size tiny --seq-len 64 --seed 0 --eval-every 0"
python train.py --process uniform $C --eval-every 250 --iters 1500 --out-dir out/r18b/uniform
python train.py --distill dcd --teacher out/r18b/uniform/ckpt.pt $C --rounds 4 --iters 150 --judge exact \
    --eval-samples 0 --out-dir out/r18b/dcd
python train.py --distill idlm --teacher out/r18b/uniform/ckpt.pt $C --iters 300 --judge exact --eval-samples 0 \
    --out-dir out/r18b/idlm-duo
python train.py --distill idlm --teacher out/r18b/dcd/ckpt.pt $C --iters 300 --judge exact --eval-samples 0 \
    --out-dir out/r18b/idlm-dcd
for S in ancestral greedy-tail; do
  python -m evaluation.sweep --ckpts out/r18b/uniform/ckpt.pt out/r18b/dcd/ckpt.pt out/r18b/idlm-duo/ckpt.pt \
      out/r18b/idlm-dcd/ckpt.pt --steps 1 2 4 8 16 64 --sampler $S --judge exact --num-samples 128 --seed 0 \
      --out-dir results/uniform/$S
done
# IDLM-code's Gaussian-argmax variant of IDLM-Duo (--tau), swept alone (results/uniform/gaussian)
python train.py --distill idlm --teacher out/r18b/uniform/ckpt.pt $C --iters 300 --tau 0.1 --judge exact --eval-samples 0 \
    --out-dir out/r18b/idlm-duo-gauss
for S in ancestral greedy-tail; do
  python -m evaluation.sweep --ckpts out/r18b/idlm-duo-gauss/ckpt.pt --steps 1 2 4 8 16 64 --sampler $S --judge exact \
      --num-samples 128 --seed 0 --out-dir results/uniform/gaussian/$S
done
