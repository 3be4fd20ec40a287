#!/bin/sh
# The uniform-state family at CPU scale on the synthetic source (exact judge), L = 64: every command that made
# results/uniform/ (study.md, ancestral/, greedy-tail/), in order. Run from the repository root:
# sh results/uniform/run.sh. The teacher is the MDLM teacher's quick synthetic recipe (evaluation/reproduce.py)
# with the uniform process; DCD is taken to 4 rounds so that its last gap, 8/32, is the step of a 4-step sampler.
set -e
O=out/study
C="--data synthetic --size tiny --seq-len 64 --seed 0"
python train.py --process uniform $C --eval-every 250 --iters 1500 --out-dir $O/uniform
python train.py --distill dcd --teacher $O/uniform/ckpt.pt $C --eval-every 0 --rounds 4 --iters 150 --judge exact \
    --eval-samples 0 --out-dir $O/dcd
# every row of the study: IDLM-Duo and IDLM-DCD, one choice changed at a time (results/uniform/study.md)
python scripts/idlm_study.py --teacher $O/uniform/ckpt.pt --dcd $O/dcd/ckpt.pt --out-dir $O
# the default (the study's "8 latent draws" row) at 1 ... 64 steps beside the teacher and DCD, and the
# teacher's frontier at L over temperatures (SPEC.md §7.5), for each sampler
for S in ancestral greedy-tail; do
  python -m evaluation.sweep --ckpts $O/uniform/ckpt.pt $O/dcd/ckpt.pt $O/idlm-duo/8-latent-draws/ckpt.pt \
      $O/idlm-dcd/8-latent-draws/ckpt.pt --steps 1 2 4 8 16 64 --sampler $S --judge exact --num-samples 128 --seed 0 \
      --out-dir results/uniform/$S
  python -m evaluation.sweep --ckpts $O/uniform/ckpt.pt --steps 64 --temperatures 0.3 0.4 0.5 0.6 0.7 0.8 0.9 1.0 1.1 --sampler $S \
      --judge exact --num-samples 128 --seed 0 --out-dir results/uniform/$S/frontier
  python -m evaluation.frontier --sweep results/uniform/$S/frontier/sweep.csv results/uniform/$S/sweep.csv \
      --reference $O/uniform/ckpt.pt@64 --rows $O/idlm-duo/8-latent-draws/ckpt.pt@4 $O/dcd/ckpt.pt@4 \
      $O/idlm-dcd/8-latent-draws/ckpt.pt@4 $O/idlm-dcd/8-latent-draws/ckpt.pt@2 \
      > results/uniform/$S/frontier/verdicts.md
done
