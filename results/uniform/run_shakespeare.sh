#!/bin/sh
# The uniform-state family on the embedded default (Shakespeare, L = 128, the `tiny` preset, every
# CPU default), judged by the embedded AR model (out/ar/ckpt.pt, trained first if missing).
# The four training commands are the pipeline with every CPU default; each distillation prints its own
# final table. The sweeps put the teacher at L/32 ... L steps and the students at L/64 ... L/8 side by side.
# Run from the repository root: sh results/uniform/run_shakespeare.sh
set -e
python train.py --process uniform
python train.py --distill idlm --teacher out/uniform/ckpt.pt
python train.py --distill dcd --teacher out/uniform/ckpt.pt
python train.py --distill idlm --teacher out/dcd/ckpt.pt --out-dir out/idlm-dcd
for S in ancestral greedy-tail; do
  python -m evaluation.sweep --ckpts out/uniform/ckpt.pt --steps 4 8 16 128 --sampler $S --judge out/ar/ckpt.pt \
      --num-samples 64 --seed 0 --out-dir results/uniform/shakespeare/$S/teacher
  python -m evaluation.sweep --ckpts out/dcd/ckpt.pt out/idlm/ckpt.pt out/idlm-dcd/ckpt.pt --steps 2 4 8 16 --sampler $S \
      --judge out/ar/ckpt.pt --num-samples 64 --seed 0 --out-dir results/uniform/shakespeare/$S/students
done
# The diagnostics of shakespeare/README.md: IDLM-DCD at a smaller step and with IDLM-code's Gaussian
# latents (each prints its final table), and how often the teachers keep a clean token
python train.py --distill idlm --teacher out/dcd/ckpt.pt --lr 3e-5 --out-dir out/idlm-dcd-lr3e-5
python train.py --distill idlm --teacher out/dcd/ckpt.pt --tau 0.1 --out-dir out/idlm-dcd-tau
python scripts/genppl_interval.py --samples results/uniform/shakespeare/ancestral/teacher/samples.jsonl.gz \
    --judge out/ar/ckpt.pt --data-windows 64   # the teacher's rows with intervals, and real text's
python scripts/keep_rate.py --ckpt out/uniform/ckpt.pt
mkdir -p out/uniform-1400 && cp out/uniform/ckpt.pt out/uniform-1400/ckpt.pt
python train.py --process uniform --out-dir out/uniform-1400 --resume --iters 1400
python scripts/keep_rate.py --ckpt out/uniform-1400/ckpt.pt
