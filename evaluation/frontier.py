"""Quality at equal diversity: GenPPL against entropy (SPEC.md §7.5).

A sampler can lower GenPPL by lowering entropy (a lower temperature does exactly that), so a pair
(GenPPL, entropy) is judged against a frontier: the reference model (the teacher at L steps)
sampled at several temperatures, a curve of GenPPL over entropy. A claim "the student matches the
teacher" holds when the student's GenPPL is no worse than the frontier's at the student's own
entropy, interpolated between the two nearest temperatures (log GenPPL linear in entropy, its 95%
interval likewise). Outside the frontier's range of entropies there is no verdict.

    python -m evaluation.frontier --sweep results/synthetic/frontier/sweep.csv results/synthetic/sweep.csv \
        --reference teacher.pt@64 --rows "sdtt/round*.pt@4" idlm.pt@4

reads sweeps' CSVs (evaluation/sweep.py; the reference's with --temperatures) and prints each row's verdict.
"""
import csv
import math
from dataclasses import dataclass

from evaluate import at_entropy, compare, entropy_interval, verdict  # noqa: F401 (SPEC.md §7.5's rule)
from plumbing import cli

DATA = "data"  # the sweep's row of the data's own samples


def plot_frontier(rows, ar_labels, path):
    """GenPPL (log axis) against entropy: each checkpoint at each step count a curve over its
    temperatures and top-p values, with 95% intervals as bars; an AR model dashed; the data a star."""
    import matplotlib  # only the commands plot: importing the module stays light
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    for label, steps in dict.fromkeys((row["label"], row["steps"]) for row in rows):
        points = sorted((row for row in rows if (row["label"], row["steps"]) == (label, steps)
                         and math.isfinite(row["genppl"])), key=lambda row: row["entropy"])
        if not points:
            continue
        error = [[r["genppl"] - r["genppl_low"] for r in points], [r["genppl_high"] - r["genppl"] for r in points]]
        style = dict(marker="*", markersize=14, color="black") if label == DATA else dict(marker="o")
        name = "data" if label == DATA else f"{label} (AR)" if label in ar_labels else f"{label}, {steps} steps"
        ax.errorbar([r["entropy"] for r in points], [r["genppl"] for r in points], yerr=error,
                    xerr=[r["entropy_half"] for r in points], capsize=2, label=name,
                    linestyle="--" if label in ar_labels else "-", **style)
    ax.set_yscale("log")
    ax.set_xlabel("entropy (nats)")
    ax.set_ylabel("GenPPL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_sweep(path):
    """A sweep's CSV rows, numbers as floats."""
    def number(value):
        try:
            return float(value)
        except ValueError:
            return value
    with open(path) as f:
        return [{k: number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def pick(rows, spec):
    """The rows of `LABEL@STEPS` (every temperature and top-p of it); one error line listing the
    rows that exist otherwise."""
    label, _, steps = spec.rpartition("@")
    found = [row for row in rows if row["label"] == label and str(row["steps"]).rstrip("0").rstrip(".") == steps]
    if not found:
        there = sorted({f"{row['label']}@{str(row['steps']).rstrip('0').rstrip('.')}" for row in rows})
        raise ValueError(f"{spec}: no such row (LABEL@STEPS) in the sweep; it has {', '.join(there)}")
    return found


@dataclass
class FrontierConfig:
    sweep: list[str] = cli.flag(["results/sweep/sweep.csv"], "sweeps' CSVs: the reference's (at several "
                                                              "temperatures) and the rows'")
    reference: str = cli.flag("", "the frontier's rows, LABEL@STEPS (e.g. the teacher at L)")
    rows: list[str] = cli.flag([], "the rows to judge, LABEL@STEPS (each of its temperatures and top-p values)")


def main(argv=None):
    cfg = cli.parse_config(FrontierConfig, __doc__.split("\n\n")[0], argv)
    rows = [row for path in cfg.sweep for row in read_sweep(path)]
    frontier = pick(rows, cfg.reference)
    print("| row | temperature | top-p | GenPPL (95%) | entropy (95%) | frontier's GenPPL at that entropy | verdict |\n"
          "|---|---|---|---|---|---|---|")
    for spec in cfg.rows:
        for row in pick(rows, spec):
            word, genppl = verdict(row, frontier)
            low, high = entropy_interval(row)
            print(f"| {spec} | {row.get('temperature', 1.0)} | {row.get('top_p', 1.0)} | {row['genppl']:.2f} "
                  f"({row['genppl_low']:.2f}-{row['genppl_high']:.2f}) | {row['entropy']:.3f} ({low:.3f}-{high:.3f}) "
                  f"| {'-' if genppl is None else f'{genppl:.2f}'} | {word} |")


if __name__ == "__main__":
    cli.run_command(main)
