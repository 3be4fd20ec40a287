"""Accuracy of checkpoints on the local multiple-choice task (tests/harness/shakespeare_mc.yaml)
through the lm-evaluation-harness, as one table (issue 20's results for the embedded default).

    python scripts/shakespeare_mc_table.py out/mdlm/ckpt.pt out/sdtt/round*.pt out/idlm/ckpt.pt out/ar/ckpt.pt \
        --out-dir results/shakespeare

Needs requirements-eval.txt. A diffusion model's choice is the one with the best NELBO bound
(K = likelihood.DEFAULT_TIME_SAMPLES antithetic times); an AR model's the exact best.
"""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from plumbing import cli  # noqa: E402
from evaluation.sweep import write_tables  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--out-dir", default="results/shakespeare")
    args = parser.parse_args()
    os.chdir(ROOT)  # the task's data file is relative to the repository root
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        from evaluation.harness import CheckpointLM  # names requirements-eval.txt when lm-eval is missing
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ValueError(str(e)) from None
    rows = []
    for path in args.ckpts:
        lm = CheckpointLM(ckpt=path)
        result = simple_evaluate(model=lm, tasks=["shakespeare_mc"],
                                 task_manager=TaskManager(include_path=str(ROOT / "tests" / "harness")))
        scores = result["results"]["shakespeare_mc"]
        rows.append({"label": path, "kind": "ar" if lm.process is None else "diffusion",
                     "accuracy": scores["acc,none"], "stderr": scores["acc_stderr,none"]})
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(write_tables(rows, ["label", "kind", "accuracy", "stderr"], out, "shakespeare_mc"))


if __name__ == "__main__":
    cli.run_command(main)
