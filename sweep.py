"""The sweep: checkpoints x sampling steps -> GenPPL and entropy as a CSV, a markdown table and
a PNG plot of GenPPL against steps (log2 axis), like the papers' figures; optionally LAMBADA
and self-BLEU. The metrics themselves live in evaluate.py.

    python sweep.py --ckpts out/mdlm/ckpt.pt out/idlm/ckpt.pt --rounds out/sdtt --steps 4 8 16 32 64 128

On the synthetic source, `--ckpts exact ...` adds the exact denoiser (exact.py): the best any
MDLM teacher could sample at each number of steps. `--rounds out/sdtt` adds iterated SDTT as
the paper plots it (its Figure 4): one line, each round's student sampled with the steps it
was distilled for.
"""
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

import cli
from checkpoint import DIFFUSION_KINDS, load_model
from data import load_data, source_from_meta, tokenizer_from_meta
from evaluate import (CONTINUATIONS_PER_PROMPT, DEFAULT_AR_JUDGE, continuation_self_bleu, lambada,
                      lambada_examples, load_judge, markdown_table, quality_rows)
from exact import ExactDenoiser

EXACT = "exact"  # --ckpts name of the synthetic source's exact denoiser


def rounds_label(run_dir):
    """The sweep label of an SDTT run's students swept at their own steps (--rounds)."""
    return str(Path(run_dir) / "round*.pt")


def round_students(run_dir, weights, device):
    """An SDTT run's students, [(model, checkpoint)], fewest sampling steps first."""
    students = [load_model(path, ("sdtt",), weights, device) for path in Path(run_dir).glob("round*.pt")]
    if not students:
        raise cli.UserError(f"--rounds {run_dir}: no SDTT round*.pt files there")
    return sorted(students, key=lambda student: student[1]["sampling_steps"])


def write_tables(rows, columns, out, name):
    """Write rows as out/name.csv and out/name.md; return the markdown table."""
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows, columns)
    (out / f"{name}.md").write_text(table + "\n")
    return table


def plot_sweep(rows, ar_labels, path):
    """GenPPL and entropy against steps (log2 axis), one line per checkpoint, as in the papers'
    figures; an AR model is a dashed horizontal reference. Infinite GenPPL (a sample the exact
    judge deems impossible) is left out of the plot."""
    import matplotlib  # only the CLI plots: importing evaluate from train.py stays light
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label in dict.fromkeys(row["label"] for row in rows):
        for ax, key in zip(axes, ("genppl", "entropy")):
            points = [(row["steps"], row[key]) for row in rows
                      if row["label"] == label and math.isfinite(row[key])]
            if points and label in ar_labels:
                ax.axhline(points[0][1], linestyle="--", color="gray", label=f"{label} (AR)")
            elif points:
                ax.plot(*zip(*points), marker="o", label=label)
    for ax, name in zip(axes, ("GenPPL", "entropy (nats)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if any(math.isfinite(row["genppl"]) for row in rows):
        axes[0].set_yscale("log")
    axes[1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

@dataclass
class EvalConfig:
    ckpts: list[str] = field(default_factory=list, metadata={"help": "checkpoints to compare: diffusion "
                             "(mdlm, sdtt, idlm) and AR ones (evaluated once, at steps = sample length); "
                             f"'{EXACT}' adds the exact denoiser of the synthetic source (exact.py)"})
    rounds: list[str] = field(default_factory=list, metadata={"help": "SDTT run folders, each swept as one "
                              "line: every round's student (roundJ.pt) at the steps it was distilled for (no LAMBADA)"})
    steps: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128],
                             metadata={"help": "sampling steps of the diffusion checkpoints of --ckpts"})
    judge: str = field(default="", metadata={"help": "GenPPL judge: 'exact' (synthetic source), our AR "
                       "checkpoint, or a Hugging Face name such as gpt2-large (needs transformers and a "
                       f"network); default: exact for synthetic data, else {DEFAULT_AR_JUDGE}"})
    num_samples: int = field(default=64, metadata={"help": "unconditional samples per row"})
    batch_size: int = field(default=16, metadata={"help": "samples generated together"})
    seq_len: int = field(default=0, metadata={"help": "sample length; 0: the shortest checkpoint context"})
    seed: int = field(default=0, metadata={"help": "every row samples with this seed"})
    weights: str = field(default="ema", metadata={"help": "weights to load", "choices": ["ema", "raw"]})
    out_dir: str = field(default="results/sweep", metadata={"help": "where the CSV, tables and plot go"})
    lambada: bool = field(default=False, metadata={"help": "also run LAMBADA on the diffusion checkpoints"})
    lambada_source: str = field(default="auto", metadata={"choices": ["auto", "hf", "local"], "help":
                                "LAMBADA texts: the Hugging Face test set (auto: when reachable) or local text"})
    lambada_examples: int = field(default=256, metadata={"help": "number of LAMBADA texts"})
    self_bleu: bool = field(default=False, metadata={"help": "also compute self-BLEU of "
                            f"{CONTINUATIONS_PER_PROMPT} continuations of each held-out prompt"})
    bleu_prompts: int = field(default=8, metadata={"help": "held-out prompts for --self-bleu"})
    data: str = field(default="shakespeare", metadata={"help": "the corpus the checkpoints saw, for held-out "
                      "text (LAMBADA local, self-BLEU prompts); ignored for the synthetic source"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "cpu, cuda"})


def held_out_data(name, data_meta, vocab_size):
    """The dataset the checkpoints were trained on (for its validation split)."""
    source = source_from_meta(data_meta)
    if source is not None:
        return source
    data = load_data(name, vocab_size)
    if data.meta() != data_meta:
        raise cli.UserError(f"--data {name} has a different tokenizer/vocabulary than the checkpoints")
    return data


def main():
    cfg = cli.parse_config(EvalConfig, "GenPPL/entropy sweep over checkpoints x sampling steps.")
    if not cfg.ckpts and not cfg.rounds:
        raise cli.UserError("give the checkpoints to evaluate: --ckpts PATH [PATH ...] or --rounds DIR")
    if min(cfg.steps) < 1:
        raise cli.UserError(f"--steps must be at least 1, got {min(cfg.steps)}")
    if min(cfg.num_samples, cfg.batch_size, cfg.lambada_examples, cfg.bleu_prompts) < 1:
        raise cli.UserError("sample, batch, example and prompt counts must be at least 1")
    kinds = DIFFUSION_KINDS + ("ar",)
    loaded = {path: (path, *load_model(path, kinds, cfg.weights, cfg.device)) for path in cfg.ckpts
              if path != EXACT}
    series = [(rounds_label(run_dir), model, ckpt) for run_dir in cfg.rounds
              for model, ckpt in round_students(run_dir, cfg.weights, cfg.device)]
    checkpoints = list(loaded.values()) + series
    if not checkpoints:
        raise cli.UserError(f"--ckpts {EXACT} needs a checkpoint of the synthetic source beside it")
    data_meta = checkpoints[0][2]["data_meta"]
    if any(ckpt["data_meta"] != data_meta for _, _, ckpt in checkpoints):
        raise cli.UserError("the checkpoints use different tokenizers/vocabularies")
    if EXACT in cfg.ckpts:
        source = source_from_meta(data_meta)
        if source is None:
            raise cli.UserError(f"--ckpts {EXACT}: the exact denoiser exists only for the synthetic source")
        loaded[EXACT] = (EXACT, ExactDenoiser(source).to(cfg.device), {"kind": "mdlm", "data_meta": data_meta})
    loaded = [loaded[path] for path in cfg.ckpts]
    seq_len = cfg.seq_len or min(model.config.seq_len for _, model, _ in loaded + series)
    tokenizer = tokenizer_from_meta(data_meta)
    judge_spec = cfg.judge or ("exact" if data_meta["kind"] == "synthetic" else DEFAULT_AR_JUDGE)
    if judge_spec == DEFAULT_AR_JUDGE and not Path(judge_spec).is_file():
        raise cli.UserError(f"no judge: {judge_spec} does not exist; train one (python train.py --model ar) "
                            "or pass --judge")
    judge = load_judge(judge_spec, data_meta, cfg.device)

    if cfg.lambada or cfg.self_bleu:
        data = held_out_data(cfg.data, data_meta, tokenizer.vocab_size)
    if cfg.lambada:
        examples = lambada_examples(cfg.lambada_source, data, cfg.lambada_examples, cfg.seed)

    entries = [(path, model, ckpt["kind"], steps) for path, model, ckpt in loaded
               for steps in ([seq_len] if ckpt["kind"] == "ar" else cfg.steps)]
    entries += [(label, model, "sdtt", ckpt["sampling_steps"]) for label, model, ckpt in series]
    rows = quality_rows(entries, judge, cfg.num_samples, cfg.batch_size, seq_len, cfg.seed, cfg.device,
                        bos_id=tokenizer.eos_id)
    columns = ["label", "steps", "genppl", "entropy", "nfe", "seconds"]
    if cfg.self_bleu:
        for row, (_, model, kind, steps) in zip(rows, entries):
            row["self_bleu"] = continuation_self_bleu(model, kind, data, seq_len, steps, cfg.bleu_prompts,
                                                      cfg.seed, tokenizer.eos_id, cfg.batch_size)
        columns.append("self_bleu")

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = write_tables(rows, columns, out, "sweep")
    plot_sweep(rows, {path for path, _, ckpt in loaded if ckpt["kind"] == "ar"}, out / "genppl.png")
    print(f"judge: {judge_spec}; {cfg.num_samples} samples of {seq_len} tokens per row\n\n{table}\n")
    if cfg.lambada:
        lambada_rows = [{"label": path, **lambada(model, examples, tokenizer, model.mask_id, cfg.device)}
                        for path, model, ckpt in loaded if ckpt["kind"] != "ar"]
        table = write_tables(lambada_rows, ["label", "accuracy", "ppl_bound", "n"], out, "lambada")
        print(f"LAMBADA, last word decoded in one forward pass\n\n{table}\n")
    print(f"results in {out}/")


if __name__ == "__main__":
    cli.run(main)
