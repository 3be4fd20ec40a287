"""The sweep: checkpoints x sampling steps -> GenPPL and entropy as a CSV, a markdown table and
a PNG plot of GenPPL against steps (log2 axis), like the papers' figures; optionally LAMBADA
and self-BLEU. The metrics themselves live in evaluate.py.

    python -m evaluation.sweep --ckpts out/mdlm/ckpt.pt out/idlm/ckpt.pt --rounds out/sdtt --steps 4 8 16 32 64 128

On the synthetic source, `--ckpts exact ...` adds the exact denoiser (evaluation/exact.py): the best any
MDLM teacher could sample at each number of steps. `--rounds out/sdtt` adds iterated SDTT as
the paper plots it (its Figure 4): one line, each round's student sampled with the steps it
was distilled for.
"""
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from data import held_out_data, source_from_meta, tokenizer_from_meta
from diffusion import MaskingProcess
from evaluate import DEFAULT_AR_JUDGE, load_judge, markdown_table, quality_rows, write_samples
from evaluation.exact import ExactDenoiser
from evaluation.lambada import lambada, lambada_examples
from evaluation.self_bleu import CONTINUATIONS_PER_PROMPT, continuation_self_bleu
from loading.checkpoint import KINDS, load_model, process_of
from plumbing import cli, devices
from plumbing.cli import flag
from samplers import DEFAULT_SAMPLER, SAMPLERS, make_sampler, sampler_name

EXACT = "exact"  # --ckpts name of the synthetic source's exact denoiser


def rounds_label(run_dir):
    """The sweep label of an SDTT run's students swept at their own steps (--rounds)."""
    return str(Path(run_dir) / "round*.pt")


def round_students(run_dir, weights, device):
    """An SDTT run's students, [(model, checkpoint, path)], fewest sampling steps first."""
    students = [(*load_model(path, ("sdtt",), weights, device), str(path)) for path in Path(run_dir).glob("round*.pt")]
    if not students:
        raise ValueError(f"--rounds {run_dir}: no SDTT round*.pt files there")
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
    ckpts: list[str] = flag([], "checkpoints to compare: diffusion (mdlm, sdtt, idlm) and AR ones (evaluated once, "
                                f"at steps = sample length); '{EXACT}' adds the exact denoiser of the synthetic "
                                "source (evaluation/exact.py); published weights load too (loading/hub.py)")
    rounds: list[str] = flag([], "SDTT run folders, each swept as one line: every round's student (roundJ.pt) at the "
                                 "steps it was distilled for (no LAMBADA)")
    steps: list[int] = flag([4, 8, 16, 32, 64, 128], "sampling steps of the diffusion checkpoints of --ckpts",
                            at_least=1)
    judge: Optional[str] = flag(None, "GenPPL judge: 'exact' (synthetic source), our AR checkpoint, or a Hugging "
                                      "Face model (folder or hub name, needs requirements-gpu.txt); default: exact "
                                      f"for synthetic data, gpt2-large for GPT-2's full vocabulary, else "
                                      f"{DEFAULT_AR_JUDGE}")
    num_samples: int = flag(64, "unconditional samples per row", at_least=1)
    batch_size: int = flag(16, "samples generated together", at_least=1)
    seq_len: Optional[int] = flag(None, "sample length (default: the shortest checkpoint context)", at_least=1)
    seed: int = flag(0, "every row samples with this seed")
    sampler: Optional[str] = flag(None, f"diffusion sampler (see samplers.py; default: the model's own: {DEFAULT_SAMPLER} "
                                        "for MDLM, analytic for SEDD, ancestral for uniform-state)", choices=list(SAMPLERS))
    compile: bool = flag(False, "torch.compile the networks' blocks (each compiles on its first step)")
    weights: str = flag("ema", "weights to load", choices=["ema", "raw"])
    out_dir: str = flag("results/sweep", "where the CSV, tables and plot go")
    lambada: bool = flag(False, "also run LAMBADA on the diffusion checkpoints")
    lambada_source: str = flag("auto", "LAMBADA texts: the Hugging Face test set (auto: when reachable) or local "
                                       "text", choices=["auto", "hf", "local"])
    lambada_examples: int = flag(256, "number of LAMBADA texts", at_least=1)
    self_bleu: bool = flag(False, f"also compute self-BLEU of {CONTINUATIONS_PER_PROMPT} continuations of each "
                                  "held-out prompt")
    bleu_prompts: int = flag(8, "held-out prompts for --self-bleu", at_least=1)
    data: str = flag("shakespeare", "the corpus the checkpoints saw, for held-out text (LAMBADA local, self-BLEU "
                                    "prompts); ignored for the synthetic source")
    device: str = flag("auto", "where to sample", choices=devices.DEVICES)


def load_checkpoints(cfg, device):
    """--ckpts in their order and --rounds' students, as (label, model, process, checkpoint),
    and the path of each student of --rounds."""
    kinds = KINDS
    loaded = {path: (path, *load_model(path, kinds, cfg.weights, device)) for path in cfg.ckpts if path != EXACT}
    loaded = {path: (label, model, process_of(ckpt), ckpt) for path, (label, model, ckpt) in loaded.items()}
    students = [(rounds_label(run_dir), *student) for run_dir in cfg.rounds
                for student in round_students(run_dir, cfg.weights, device)]
    series = [(label, model, process_of(ckpt), ckpt) for label, model, ckpt, _ in students]
    found = list(loaded.values()) + series
    if not found:
        raise ValueError(f"--ckpts {EXACT} needs a checkpoint of the synthetic source beside it")
    data_meta = found[0][3]["data_meta"]
    if any(ckpt["data_meta"] != data_meta for *_, ckpt in found):
        raise ValueError("the checkpoints use different tokenizers/vocabularies")
    if EXACT in cfg.ckpts:
        source = source_from_meta(data_meta)
        if source is None:
            raise ValueError(f"--ckpts {EXACT}: the exact denoiser exists only for the synthetic source")
        loaded[EXACT] = (EXACT, ExactDenoiser(source).to(device), MaskingProcess(source.vocab_size),
                         {"kind": "mdlm", "data_meta": data_meta})
    return [loaded[path] for path in cfg.ckpts], series, data_meta, [path for *_, path in students]


def default_judge(cfg, data_meta):
    """--judge when not given: exact for the synthetic source, GPT-2 Large (the papers') for
    GPT-2's full vocabulary, else our AR model."""
    if cfg.judge is None and data_meta == {"kind": "gpt2", "gpt2_ids": None}:
        return "gpt2-large"
    judge = cfg.judge or ("exact" if data_meta["kind"] == "synthetic" else DEFAULT_AR_JUDGE)
    if judge == DEFAULT_AR_JUDGE and not Path(judge).is_file():
        raise ValueError(f"no judge: {judge} does not exist; train one (python train.py --model ar) or pass --judge")
    return judge


def main():
    cfg = cli.parse_config(EvalConfig, "GenPPL/entropy sweep over checkpoints x sampling steps.")
    if not cfg.ckpts and not cfg.rounds:
        raise ValueError("give the checkpoints to evaluate: --ckpts PATH [PATH ...] or --rounds DIR")
    device = devices.pick(cfg.device)
    loaded, series, data_meta, series_paths = load_checkpoints(cfg, device)
    seq_len = cfg.seq_len or min(model.config.seq_len for _, model, _, _ in loaded + series)
    tokenizer = tokenizer_from_meta(data_meta)
    judge_spec = default_judge(cfg, data_meta)
    judge = load_judge(judge_spec, data_meta, device)
    if cfg.lambada or cfg.self_bleu:
        data = held_out_data(cfg.data, data_meta, tokenizer.vocab_size)

    if cfg.compile:
        for _, model, _, _ in loaded + series:
            devices.compile_blocks(model)
    sampler = make_sampler(cfg.sampler) if cfg.sampler else None  # None: each checkpoint's process's default
    entries = [(label, model, process, steps) for label, model, process, _ in loaded
               for steps in ([seq_len] if process is None else cfg.steps)]
    entries += [(label, model, process, ckpt["sampling_steps"]) for label, model, process, ckpt in series]
    scored = []
    rows = quality_rows(entries, judge, cfg.num_samples, cfg.batch_size, seq_len, cfg.seed, device,
                        bos_id=tokenizer.eos_id, sampler=sampler, scored=scored)
    sources = [{"checkpoint": label, "sampler": sampler_name(cfg.sampler, process) if process is not None else "ar"}
               for label, _, process, _ in entries[:len(entries) - len(series)]]
    sources += [{"checkpoint": path, "sampler": sampler_name(cfg.sampler, process)}
                for path, (_, _, process, _) in zip(series_paths, series)]
    columns = ["label", "steps", "genppl", "entropy", "nfe", "seconds"]
    if cfg.self_bleu:
        for row, (_, model, process, steps) in zip(rows, entries):
            row["self_bleu"] = continuation_self_bleu(model, process, data, seq_len, steps, cfg.bleu_prompts,
                                                      cfg.seed, tokenizer.eos_id, cfg.batch_size, sampler)
        columns.append("self_bleu")

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = write_tables(rows, columns, out, "sweep")
    write_samples(out / "samples.jsonl", scored, data_meta, sources)
    plot_sweep(rows, {label for label, _, process, _ in loaded if process is None}, out / "genppl.png")
    print(f"judge: {judge_spec}; {cfg.num_samples} samples of {seq_len} tokens per row\n\n{table}\n")
    if cfg.lambada:
        examples = lambada_examples(cfg.lambada_source, data, cfg.lambada_examples, cfg.seed)
        lambada_rows = [{"label": label, **lambada(model, process, examples, tokenizer, device)}
                        for label, model, process, _ in loaded if process is not None]
        table = write_tables(lambada_rows, ["label", "accuracy", "ppl_bound", "n"], out, "lambada")
        print(f"LAMBADA, last word decoded in one forward pass\n\n{table}\n")
    print(f"results in {out}/")


if __name__ == "__main__":
    cli.run_command(main)
