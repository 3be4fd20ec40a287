"""Same seeds, same weights, same samples: train every method and process for a few steps at micro
size on the synthetic source through train.py's command line, sample each result with sample.py,
and compare two such recordings bit for bit. A refactor of the loops must leave them identical.

    python scripts/same_runs.py record /tmp/before      # at the old commit (a git worktree)
    python scripts/same_runs.py record /tmp/after       # at the new one
    python scripts/same_runs.py compare /tmp/before /tmp/after

Only the command lines are used, so any two commits of the project can be compared (the runs
take about 4 minutes on 2 cores).
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--data", "synthetic", "--size", "micro", "--seq-len", "16", "--batch-size", "8", "--eval-every", "5",
          "--eval-batches", "1", "--log-every", "5", "--seed", "3"]
DISTILL = ["--iters", "5", "--eval-samples", "0"]
# name -> (train.py arguments, the checkpoints it leaves, sampling steps)
RUNS = {
    "mdlm": (["--iters", "10"], ["ckpt.pt"], 8),
    "ar": (["--model", "ar", "--iters", "10"], ["ckpt.pt"], None),
    "sedd": (["--model", "sedd", "--iters", "10"], ["ckpt.pt"], 8),
    "uniform": (["--process", "uniform", "--iters", "10"], ["ckpt.pt"], 8),
    "duo": (["--process", "uniform", "--tau", "0.001", "--iters", "10"], ["ckpt.pt"], 8),
    "mdlm-accumulated": (["--iters", "10", "--micro-batch-size", "2"], ["ckpt.pt"], 8),
    "sdtt": (["--distill", "sdtt", "--teacher", "mdlm", "--rounds", "2", *DISTILL],
             ["round0.pt", "round1.pt", "ckpt.pt"], 4),
    "sdtt-kl-reset": (["--distill", "sdtt", "--teacher", "mdlm", "--rounds", "2", "--divergence", "reverse_kl",
                       "--reset-optimizer", "--ema-teacher", *DISTILL], ["round1.pt"], 4),
    "sdtt-sedd": (["--distill", "sdtt", "--teacher", "sedd", "--rounds", "1", *DISTILL], ["round0.pt"], 8),
    "idlm": (["--distill", "idlm", "--teacher", "mdlm", *DISTILL], ["ckpt.pt"], 1),
    "idlm-fresh": (["--distill", "idlm", "--teacher", "mdlm", "--fake-steps", "2", "--fake-batch", "fresh",
                    "--micro-batch-size", "4", *DISTILL], ["ckpt.pt"], 1),
    "idlm-sedd": (["--distill", "idlm", "--teacher", "sedd", *DISTILL], ["ckpt.pt"], 1),
    "idlm-duo": (["--distill", "idlm", "--teacher", "uniform", "--latent-draws", "2", *DISTILL], ["ckpt.pt"], 1),
    "idlm-code": (["--distill", "idlm", "--teacher", "uniform", "--recipe", "idlm-code", *DISTILL], ["ckpt.pt"], 1),
    "dcd": (["--distill", "dcd", "--teacher", "uniform", "--rounds", "2", *DISTILL],
            ["round0.pt", "round1.pt", "ckpt.pt"], 1),
}


def command(name, folder):
    args, _, _ = RUNS[name]
    args = [str(folder / a) + "/ckpt.pt" if i and args[i - 1] == "--teacher" else a for i, a in enumerate(args)]
    return [sys.executable, str(ROOT / "train.py"), *COMMON, *args, "--out-dir", str(folder / name)]


def run(cmd):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")


def record(folder):
    """Train every run of RUNS into folder/<name>/, then sample each checkpoint into <name>.jsonl."""
    folder = Path(folder).resolve()
    for name, (_, ckpts, steps) in RUNS.items():
        print(f"{name}: training", flush=True)
        run(command(name, folder))
        for ckpt in ckpts:
            out = folder / name / f"{Path(ckpt).stem}.jsonl"
            run([sys.executable, str(ROOT / "sample.py"), "--ckpt", str(folder / name / ckpt), "--num-samples", "4",
                 "--seed", "5", "--jsonl", str(out)] + (["--steps", str(steps)] if steps else ["--prompt", "a b"]))


def compare(before, after):
    """Every checkpoint's tensors and every sample equal, bit for bit. Returns the differences."""
    differences = []
    for name, (_, ckpts, _) in RUNS.items():
        for ckpt in ckpts:
            a, b = (torch.load(Path(f) / name / ckpt, weights_only=True) for f in (before, after))
            for key in ("model", "ema", "fake"):
                if key in a or key in b:
                    same = a.get(key, {}).keys() == b.get(key, {}).keys() and all(
                        torch.equal(a[key][k], b[key][k]) for k in a[key])
                    if not same:
                        differences.append(f"{name}/{ckpt}: {key} differs")
            samples = [[json.loads(line)["tokens"] for line in (Path(f) / name / f"{Path(ckpt).stem}.jsonl").open()]
                       for f in (before, after)]
            if samples[0] != samples[1]:
                differences.append(f"{name}/{ckpt}: samples differ")
    return differences


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("record", help="train and sample every run into a folder").add_argument("folder")
    both = sub.add_parser("compare", help="compare two recordings bit for bit")
    both.add_argument("before")
    both.add_argument("after")
    args = parser.parse_args()
    if args.verb == "record":
        record(args.folder)
        return
    differences = compare(args.before, args.after)
    print("\n".join(differences) or f"identical: {sum(len(c) for _, c, _ in RUNS.values())} checkpoints of "
                                    f"{len(RUNS)} runs, their weights and samples")
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()
