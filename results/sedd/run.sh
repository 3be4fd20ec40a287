#!/bin/sh
# SEDD teacher at L steps vs IDLM-SEDD at L/4 and L/8 on the synthetic source (exact judge), L = 64.
# The teacher and student flags are evaluation/reproduce.py's quick synthetic setting (the MDLM teacher's recipe).
set -e
C="--data synthetic --size tiny --seq-len 64 --seed 0 --eval-every 0"
python train.py --model sedd $C --iters 1500 --out-dir out/r19/sedd
python train.py --distill idlm --teacher out/r19/sedd/ckpt.pt $C --iters 300 --judge exact --eval-samples 0 --out-dir out/r19/idlm-sedd
for sampler in analytic cached; do
  python -m evaluation.sweep --ckpts out/r19/sedd/ckpt.pt out/r19/idlm-sedd/ckpt.pt --steps 8 16 64 --sampler $sampler \
      --judge exact --num-samples 128 --seed 0 --out-dir results/sedd/$sampler
done
# the teacher's frontier at L over temperatures, and IDLM-SEDD judged on it at its own entropy (SPEC.md §7.5)
python -m evaluation.sweep --ckpts out/r19/sedd/ckpt.pt --steps 64 --temperatures 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 \
    --sampler analytic --judge exact --num-samples 128 --seed 0 --out-dir results/sedd/analytic/frontier
python -m evaluation.frontier --sweep results/sedd/analytic/frontier/sweep.csv results/sedd/analytic/sweep.csv \
    --reference out/r19/sedd/ckpt.pt@64 --rows out/r19/idlm-sedd/ckpt.pt@16 out/r19/idlm-sedd/ckpt.pt@8 \
    > results/sedd/analytic/frontier/verdicts.md
