#!/bin/sh
# The uniform-state family on the embedded default (Shakespeare, L = 128, the `tiny` preset, every
# CPU default), judged by the embedded AR model (out/ar/ckpt.pt, trained first if missing).
# The four training commands are the acceptance commands; each distillation prints its own
# final table. The sweeps put all four checkpoints side by side at L/32, L/16, L/8 and L steps.
# Run from the repository root: sh results/uniform/run_shakespeare.sh
set -e
python train.py --process uniform
python train.py --distill idlm --teacher out/uniform/ckpt.pt
python train.py --distill dcd --teacher out/uniform/ckpt.pt
python train.py --distill idlm --teacher out/dcd/ckpt.pt --out-dir out/idlm-dcd
for S in ancestral greedy-tail; do
  python sweep.py --ckpts out/uniform/ckpt.pt out/dcd/ckpt.pt out/idlm/ckpt.pt out/idlm-dcd/ckpt.pt \
      --steps 4 8 16 128 --sampler $S --judge out/ar/ckpt.pt --num-samples 64 --seed 0 \
      --out-dir results/uniform/shakespeare/$S
done
