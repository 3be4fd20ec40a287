#!/bin/sh
# The uniform-state family on the embedded default (Shakespeare, L = 128, the `tiny` preset, every CPU default),
# judged by the AR model of `python -m evaluation.reproduce --quick` (trained here with the same flags if missing).
# Run from the repository root: sh results/uniform/run_shakespeare.sh (a killed call resumes). The sweeps put the
# teacher at L/32 ... L steps (and its frontier at L over temperatures) and the students at L/64 ... L/8 side by side.
# IDLM's default here (the exact gradient, 8 latent draws, 250 steps) ran at 23 s a step on 2 CPU cores, 96 min a
# run; results/uniform/shakespeare/README.md was made with IDLM="--latent-draws 2 --iters 100" SAMPLERS=ancestral.
set -e
IDLM=${IDLM:-}
SAMPLERS=${SAMPLERS:-ancestral greedy-tail}
J=out/repro/shakespeare/ar/ckpt.pt
[ -f $J ] || python train.py --model ar --data shakespeare --size tiny --seq-len 128 --iters 300 \
    --out-dir out/repro/shakespeare/ar
python train.py --process uniform --resume
python train.py --distill dcd --teacher out/uniform/ckpt.pt --resume
python train.py --distill idlm --teacher out/uniform/ckpt.pt --out-dir out/idlm-duo --resume $IDLM
python train.py --distill idlm --teacher out/dcd/ckpt.pt --out-dir out/idlm-dcd --resume $IDLM
for S in $SAMPLERS; do
  python -m evaluation.sweep --ckpts out/uniform/ckpt.pt --steps 4 8 16 128 --sampler $S --judge $J \
      --num-samples 64 --seed 0 --out-dir results/uniform/shakespeare/$S/teacher
  python -m evaluation.sweep --ckpts out/dcd/ckpt.pt out/idlm-duo/ckpt.pt out/idlm-dcd/ckpt.pt --steps 2 4 8 16 \
      --sampler $S --judge $J --num-samples 64 --seed 0 --out-dir results/uniform/shakespeare/$S/students
  python -m evaluation.sweep --ckpts out/uniform/ckpt.pt $J --steps 128 --temperatures 0.4 0.5 0.6 0.7 0.8 0.9 1.0 1.1 \
      --sampler $S --judge $J --num-samples 64 --seed 0 --out-dir results/uniform/shakespeare/$S/frontier
  python -m evaluation.frontier --sweep results/uniform/shakespeare/$S/frontier/sweep.csv \
      results/uniform/shakespeare/$S/students/sweep.csv --reference out/uniform/ckpt.pt@128 \
      --rows out/idlm-duo/ckpt.pt@8 out/dcd/ckpt.pt@8 out/idlm-dcd/ckpt.pt@8 out/idlm-dcd/ckpt.pt@4 \
      > results/uniform/shakespeare/$S/frontier/verdicts.md
done
