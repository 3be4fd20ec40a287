"""GenPPL and entropy of every row of a samples.jsonl (evaluation/sweep.py, a distillation's final table),
re-scored by a judge, with 95% intervals: how far apart two rows must be to call an ordering.

    python scripts/genppl_interval.py --samples results/uniform/ancestral/samples.jsonl --judge exact

GenPPL = exp(mean over samples of each sample's NLL per token) (SPEC.md §7.1), computed by
evaluate.sample_metrics, the final table's own function: its interval is exp(m +- 1.96 s / sqrt(n)) for
the mean m and standard deviation s of the per-sample NLLs (the samples of a row are independent draws);
the entropy's is m +- 1.96 s / sqrt(n).
The judge's vocabulary is the first row's checkpoint's (its data_meta).
"""
import gzip
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import held_out_data, tokenizer_from_meta  # noqa: E402
from evaluate import load_judge, markdown_table, sample_metrics  # noqa: E402
from loading import checkpoint  # noqa: E402
from plumbing.cli import flag, parse_config, run_command  # noqa: E402

@dataclass
class IntervalConfig:
    samples: Optional[str] = flag(None, "the samples.jsonl to re-score (or samples.jsonl.gz)")
    judge: str = flag("exact", "'exact' (synthetic source), our AR checkpoint or a Hugging Face model")
    ckpt: Optional[str] = flag(None, "the checkpoint whose data_meta gives the vocabulary (default: the first row's)")
    device: str = flag("cpu", "where the judge runs")
    data_windows: int = flag(0, "also score this many validation windows of the training data, as long as the "
                                "samples, as a row 'data' (the real text's reference)", at_least=0)
    data: Optional[str] = flag(None, "the training data for --data-windows, as train.py's --data (default: what the "
                                     "checkpoint recorded; the synthetic source is its own)")


def read_rows(path):
    """{(label, steps): [token lists]} in file order, and the first row's checkpoint."""
    rows, first = defaultdict(list), None
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        for line in f:
            sample = json.loads(line)
            rows[(sample["label"], sample["steps"])].append(sample["tokens"])
            first = first or sample.get("checkpoint")
    if not rows:
        raise ValueError(f"{path} has no samples")
    return rows, first


def main():
    cfg = parse_config(IntervalConfig, __doc__.split("\n\n")[0])
    if cfg.samples is None:
        raise ValueError("give --samples <samples.jsonl> (evaluation.sweep and a distillation's table write one)")
    rows, first = read_rows(cfg.samples)
    ckpt = checkpoint.read(cfg.ckpt or first)
    meta = ckpt["data_meta"]
    judge = load_judge(cfg.judge, meta, torch.device(cfg.device))
    if cfg.data_windows:
        data = held_out_data(cfg.data or ckpt.get("train_config", {}).get("data"), meta,
                             tokenizer_from_meta(meta).vocab_size)
        length = len(next(iter(rows.values()))[0])
        rows[("data", "-")] = data.batch("val", cfg.data_windows, length, torch.Generator().manual_seed(0)).tolist()
    table = []
    for (label, steps), samples in rows.items():
        metrics = sample_metrics(torch.tensor(samples), judge)   # the final table's own GenPPL and entropy
        table.append({"label": label, "steps": steps, "n": len(samples), "genppl": f"{metrics['genppl']:.2f}",
                      "genppl 95%": f"{metrics['genppl_low']:.2f}-{metrics['genppl_high']:.2f}",
                      "entropy": f"{metrics['entropy']:.3f} +- {metrics['entropy_half']:.3f}"})
    print(markdown_table(table, ["label", "steps", "n", "genppl", "genppl 95%", "entropy"]))


if __name__ == "__main__":
    run_command(main)
