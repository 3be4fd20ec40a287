#!/bin/sh
# The uniform-state family on the embedded default (Shakespeare, L = 128, the `tiny` preset, every CPU default),
# judged by the embedded AR model (out/ar/ckpt.pt, trained first if missing). Run from the repository root:
# sh results/uniform/run_shakespeare.sh. Each distillation prints its own final table; the sweeps put the
# teacher at L/32 ... L steps (and its frontier at L over temperatures) and the students at L/64 ... L/8 side by side.
set -e
python train.py --process uniform
python train.py --distill dcd --teacher out/uniform/ckpt.pt
python train.py --distill idlm --teacher out/uniform/ckpt.pt --out-dir out/idlm-duo
python train.py --distill idlm --teacher out/dcd/ckpt.pt --out-dir out/idlm-dcd
for S in ancestral greedy-tail; do
  python -m evaluation.sweep --ckpts out/uniform/ckpt.pt --steps 4 8 16 128 --sampler $S --judge out/ar/ckpt.pt \
      --num-samples 64 --seed 0 --out-dir results/uniform/shakespeare/$S/teacher
  python -m evaluation.sweep --ckpts out/dcd/ckpt.pt out/idlm-duo/ckpt.pt out/idlm-dcd/ckpt.pt --steps 2 4 8 16 \
      --sampler $S --judge out/ar/ckpt.pt --num-samples 64 --seed 0 --out-dir results/uniform/shakespeare/$S/students
  python -m evaluation.sweep --ckpts out/uniform/ckpt.pt out/ar/ckpt.pt --steps 128 --temperatures 0.6 0.7 0.8 0.9 1.0 1.1 \
      --sampler $S --judge out/ar/ckpt.pt --num-samples 64 --seed 0 --out-dir results/uniform/shakespeare/$S/frontier
  python -m evaluation.frontier --sweep results/uniform/shakespeare/$S/frontier/sweep.csv \
      results/uniform/shakespeare/$S/students/sweep.csv --reference out/uniform/ckpt.pt@128 \
      --rows out/idlm-duo/ckpt.pt@8 out/dcd/ckpt.pt@8 out/idlm-dcd/ckpt.pt@8 out/idlm-dcd/ckpt.pt@4
done
