"""The sweep: checkpoints x sampling steps -> GenPPL and entropy as a CSV, a markdown table and
a PNG plot of GenPPL against steps (log2 axis), like the papers' figures; optionally LAMBADA
and self-BLEU. The metrics themselves live in evaluate.py.

    python -m evaluation.sweep --ckpts out/mdlm/ckpt.pt out/idlm/ckpt.pt --rounds out/sdtt --steps 4 8 16 32 64 128
    python -m evaluation.sweep --ckpts out/mdlm/ckpt.pt --steps 128 --temperatures 0.8 0.9 1 1.1   # a frontier

With several --temperatures or --top-p values (or --frontier) every row is sampled at each of them,
and frontier.png plots GenPPL against entropy (SPEC.md §7.5): each checkpoint at each step count a
curve over the temperatures, the data's own samples a point, 95% intervals as bars. frontier.py
judges claims at equal entropy from such a sweep's CSV. A row's self-BLEU and MAUVE are of draws at
its own temperature and top-p.

Every combination of options either runs to its tables or is refused in one line before anything is
sampled: each row's sampling is tried on a network that stops at its first forward (`Unrun`), the
judge scores a sequence of the samples' length, the held-out data, LAMBADA's texts and the output
folder are made ready first.

On the synthetic source, `--ckpts exact ...` adds the exact denoiser (evaluation/exact.py): the best any
MDLM teacher could sample at each number of steps. `--rounds out/sdtt` adds iterated SDTT as
the paper plots it (its Figure 4): one line, each round's student sampled with the steps it
was distilled for.
"""
import csv
import itertools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from data import held_out_data, source_from_meta, tokenizer_from_meta
from diffusion import MaskingProcess
from evaluate import (DEFAULT_AR_JUDGE, generate, load_judge, markdown_table, quality_rows, sample_metrics,
                      write_samples)
from evaluation.exact import ExactDenoiser
from evaluation.frontier import DATA, plot_frontier
from evaluation.lambada import lambada, lambada_examples
from evaluation.mauve import load_mauve_judge
from evaluation.self_bleu import CONTINUATIONS_PER_PROMPT, continuation_self_bleu, sentence_bleu
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


def write_tables(rows, columns, out, name, csv_extra=()):
    """Write rows as out/name.csv (with the columns csv_extra too) and out/name.md; return the markdown table."""
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*columns, *csv_extra], extrasaction="ignore")
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


def held_out_sets(cfg, data_meta, seq_len, vocab_size, frontier):
    """What the sweep reads of the held-out data, read before anything is sampled (None where not asked):
    the windows self-BLEU's prompts come from, the references of the data's point and of MAUVE (read
    once), LAMBADA's texts. Windows have the samples' seq_len tokens: the synthetic source's chain does
    not depend on its length, so it draws that many; a corpus's windows are cut at any length."""
    if not (cfg.self_bleu or frontier or cfg.mauve or cfg.lambada):
        return None, None, None
    data = held_out_data(cfg.data, data_meta, vocab_size)
    windows = data if source_from_meta(data_meta) is None else source_from_meta({**data_meta, "seq_len": seq_len})
    references = (windows.batch("val", cfg.num_samples, seq_len, torch.Generator().manual_seed(cfg.seed))
                  if frontier or cfg.mauve else None)
    examples = lambada_examples(cfg.lambada_source, data, cfg.lambada_examples, cfg.seed) if cfg.lambada else None
    return windows, references, examples


def data_row(tokens, judge, blank=()):
    """The data's own point, tokens [N, L] of it judged as a model's samples are (for the synthetic
    source, the n-gram divergences' floor: the sampling error of as many samples); the columns `blank`
    (self-BLEU, MAUVE: measures of a model's draws) left '-'."""
    return {"label": DATA, "steps": "-", **sample_metrics(tokens, judge), "nfe": 0, "seconds": 0.0,
            "temperature": "-", "top_p": "-", **dict.fromkeys(blank, "-")}


class FirstForward(Exception):
    """What `Unrun` raises at the first forward it is asked for."""


class Unrun(torch.nn.Module):
    """A model's stand-in that stops whoever samples with it at its first forward: everything that
    sampling checks before (the samples fit the context, the process holds a prompt, the sampler
    takes the process, an AR model has a start token) is checked, and nothing is computed."""

    def __init__(self, model):
        super().__init__()
        self.config = model.config
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)  # generate asks for a device

    def forward(self, *args, **kwargs):
        raise FirstForward

    def generate(self, *args, **kwargs):
        raise FirstForward


def check_sampling(entries, seq_len, sampler, bos_id, prompt=(), what=""):
    """Raise now what sampling each entry (label, model, process, steps) would raise later, naming the
    entry and `what` it was sampled for."""
    for label, model, process, steps in entries:
        try:
            generate(Unrun(model), process, 1, seq_len, steps, sampler=sampler, prompt=prompt, bos_id=bos_id)
        except FirstForward:
            pass
        except ValueError as e:
            raise ValueError(f"{label}{what}: {e}") from None


def check_judge(judge, seq_len):
    """Raise now what judging samples of seq_len tokens would raise later: the judge scores one."""
    if hasattr(judge, "divergences") and seq_len < 3:  # evaluate.sample_metrics asks the same
        raise ValueError(f"samples of {seq_len} tokens are too short for the exact judge's n-gram divergences "
                         "(n = 1, 2, 3): give a --seq-len of at least 3 tokens")
    judge.nll_per_token(torch.zeros(1, seq_len, dtype=torch.long))


def check_before_sampling(cfg, entries, seq_len, sampler, judge, bos_id):
    """Raise now what the sweep would raise once it has sampled: each row's sampling is tried on `Unrun`
    (with self-BLEU's prompt too), the judge scores a sequence of seq_len tokens, sacrebleu is there."""
    check_sampling(entries, seq_len, sampler, bos_id)
    check_judge(judge, seq_len)
    if cfg.self_bleu:
        sentence_bleu()
        check_sampling(entries, seq_len, sampler, bos_id, prompt=[0] * (seq_len // 2),
                       what=" with --self-bleu (it continues held-out prompts)")


def draw_measures(cfg, rows, entries, scored, windows, references, mauve_judge, seq_len, sampler, bos_id):
    """Each row's self-BLEU (--self-bleu) and MAUVE (--mauve), both of its own draws (SPEC.md §7.4): its
    continuations of held-out prompts at its temperature and top-p, its samples against the data's
    windows. rows follow entries, once per temperature and top-p. Returns the columns added."""
    columns = []
    if cfg.self_bleu:
        for row, (_, model, process, steps) in zip(rows, itertools.cycle(entries)):
            row["self_bleu"] = continuation_self_bleu(model, process, windows, seq_len, steps, cfg.bleu_prompts,
                                                      cfg.seed, bos_id, cfg.batch_size, sampler, row["temperature"],
                                                      row["top_p"])
        columns.append("self_bleu")
    if mauve_judge is not None:
        cut = slice(0, mauve_judge.max_tokens)
        for row, entry in zip(rows, scored):
            row["mauve"] = mauve_judge.mauve(references[:, cut], entry["tokens"][:, cut])
        columns.append("mauve")
    return columns


def ready_folder(path):
    """The output folder, made and written into once (then nothing is left there), before any sampling."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    return path


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
                                  "held-out prompt, drawn at each row's temperature and top-p")
    bleu_prompts: int = flag(8, "held-out prompts for --self-bleu", at_least=1)
    data: str = flag("shakespeare", "the corpus the checkpoints saw, for held-out text (LAMBADA local, self-BLEU "
                                    "prompts, the data's point and MAUVE's reference); ignored for the synthetic source")
    temperatures: list[float] = flag([1.0], "sample every row at each of these softmax temperatures", above=0)
    top_p: list[float] = flag([1.0], "... and at each of these nucleus thresholds, in (0, 1]", above=0, at_most=1)
    frontier: bool = flag(False, "also the data's own point and frontier.png (on by itself with several "
                                 "temperatures or top-p values)")
    mauve: bool = flag(False, "also MAUVE of each row's samples against as many held-out windows, on the judge's "
                              "features: our AR judge's hidden states, or mauve-text's of a Hugging Face GPT-2 (needs "
                              "mauve-text; mauve's clusters: a tenth of the samples)")
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


def main(argv=None):
    cfg = cli.parse_config(EvalConfig, "GenPPL/entropy sweep over checkpoints x sampling steps.", argv)
    if not cfg.ckpts and not cfg.rounds:
        raise ValueError("give the checkpoints to evaluate: --ckpts PATH [PATH ...] or --rounds DIR")
    device = devices.pick(cfg.device)
    loaded, series, data_meta, series_paths = load_checkpoints(cfg, device)
    seq_len = cfg.seq_len or min(model.config.seq_len for _, model, _, _ in loaded + series)
    tokenizer = tokenizer_from_meta(data_meta)
    judge_spec = default_judge(cfg, data_meta)
    judge = load_judge(judge_spec, data_meta, device)
    sampler = make_sampler(cfg.sampler) if cfg.sampler else None  # None: each checkpoint's process's default
    entries = [(label, model, process, steps) for label, model, process, _ in loaded
               for steps in ([seq_len] if process is None else cfg.steps)]
    entries += [(label, model, process, ckpt["sampling_steps"]) for label, model, process, ckpt in series]
    shapes = [(t, p) for p in cfg.top_p for t in cfg.temperatures]
    frontier = cfg.frontier or len(shapes) > 1

    # what could refuse refuses here, before anything is sampled
    check_before_sampling(cfg, entries, seq_len, sampler, judge, tokenizer.eos_id)
    mauve_judge = load_mauve_judge(judge_spec, data_meta, device) if cfg.mauve else None
    windows, references, examples = held_out_sets(cfg, data_meta, seq_len, tokenizer.vocab_size, frontier)
    out = ready_folder(Path(cfg.out_dir))

    for _, model, _, _ in loaded + series if cfg.compile else []:
        devices.compile_blocks(model)
    sources = [{"checkpoint": label, "sampler": sampler_name(cfg.sampler, process) if process is not None else "ar"}
               for label, _, process, _ in entries[:len(entries) - len(series)]]
    sources += [{"checkpoint": path, "sampler": sampler_name(cfg.sampler, process)}
                for path, (_, _, process, _) in zip(series_paths, series)]
    scored, rows = [], []
    for temperature, top_p in shapes:
        rows += quality_rows(entries, judge, cfg.num_samples, cfg.batch_size, seq_len, cfg.seed, device,
                             bos_id=tokenizer.eos_id, sampler=sampler, scored=scored, temperature=temperature,
                             top_p=top_p)
    sources *= len(shapes)
    columns = ["label", "steps", "genppl", "entropy", "nfe", "seconds"] + (["temperature", "top_p"] if len(shapes) > 1
                                                                          else [])
    columns += [c for c in ("js1", "js2", "js3") if c in rows[0]]
    measures = draw_measures(cfg, rows, entries, scored, windows, references, mauve_judge, seq_len, sampler,
                             tokenizer.eos_id)
    columns += measures
    if frontier:
        rows.append(data_row(references, judge, blank=measures))

    extra = ["genppl_low", "genppl_high", "entropy_half"] + ([] if len(shapes) > 1 else ["temperature", "top_p"])
    table = write_tables(rows, columns, out, "sweep", extra)
    write_samples(out / "samples.jsonl", scored, data_meta, sources)
    ar_labels = {label for label, _, process, _ in loaded if process is None}
    plot_sweep([row for row in rows if row["label"] != DATA], ar_labels, out / "genppl.png")
    if frontier:
        plot_frontier(rows, ar_labels, out / "frontier.png")
    print(f"judge: {judge_spec}; {cfg.num_samples} samples of {seq_len} tokens per row\n\n{table}\n")
    if cfg.lambada:
        lambada_rows = [{"label": label, **lambada(model, process, examples, tokenizer, device)}
                        for label, model, process, _ in loaded if process is not None]
        table = write_tables(lambada_rows, ["label", "accuracy", "ppl_bound", "n"], out, "lambada")
        print(f"LAMBADA, last word decoded in one forward pass\n\n{table}\n")
    print(f"results in {out}/")


if __name__ == "__main__":
    cli.run_command(main)
