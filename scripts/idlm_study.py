"""Which of IDLM's choices decides collapse and distillation, on the synthetic source (results/uniform/study.md).

    python scripts/idlm_study.py --teacher out/study/uniform/ckpt.pt --dcd out/study/dcd/ckpt.pt

Each row distills the uniform-state teacher (IDLM-Duo) and its DCD student (IDLM-DCD) with IDLM, changing
one choice of SPEC.md §6.5 from the base (the CPU defaults, the exact gradient with 2 latent draws), then samples --num-samples sequences
at each of --steps with each sampler, judged by the source's exact likelihood: GenPPL with its 95%
interval, the mean sample entropy with its half-width, and from the run's log.jsonl the student's
sample entropy at the first and the last logged step (the collapse diagnostic, SPEC.md §6.6). The
teacher at those steps and at L, and DCD at those steps, are the reference rows. A finished run is
reused; an unfinished one resumes. The table goes into --report between its two marker lines (the
page's prose around it stays), every sample into samples.jsonl.gz beside it.
"""
import gzip
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from evaluate import load_judge, quality_rows, write_samples  # noqa: E402
from loading import checkpoint  # noqa: E402
from plumbing.cli import flag, parse_config, run_command  # noqa: E402
from samplers import make_sampler  # noqa: E402

# name -> the flags that change one choice from the base: the exact gradient with 2 latent draws and the CPU
# defaults (SPEC.md §6.5); 8 draws became the default after this study, so the base names its 2
BASE = ["--latent-draws", "2"]
ROWS = {
    "base": BASE,
    "no score term": ["--idlm-gradient", "no-score"],
    "4 latent draws": ["--latent-draws", "4"],
    "8 latent draws": ["--latent-draws", "8"],
    "IDLM-code's noise window": [*BASE, "--noise-window", "0.9455", "0.0493"],
    "4 latent draws and IDLM-code's noise window": ["--latent-draws", "4", "--noise-window", "0.9455", "0.0493"],
    "lr 3e-5": [*BASE, "--lr", "3e-5"],
    "lr 3e-4": [*BASE, "--lr", "3e-4"],
    "EMA 0.999": [*BASE, "--ema", "0.999"],
    "2 fake steps per student step": [*BASE, "--fake-steps", "2"],
    "the fake on a batch of its own": [*BASE, "--fake-batch", "fresh"],
    "loss summed over positions, no clipping": [*BASE, "--loss-per", "sequence", "--grad-clip", "0"],
    "Gaussian latents, tau 1e-3": ["--tau", "1e-3"],
    "IDLM-code's recipe": ["--recipe", "idlm-code"],
    "IDLM-code's recipe at our lr, warm-up and EMA": ["--recipe", "idlm-code", "--lr", "1e-4", "--warmup", "20",
                                                       "--ema", "0.99"],
}
MARKERS = ("<!-- study table: scripts/idlm_study.py writes below -->", "<!-- end of the study table -->")


@dataclass
class StudyConfig:
    teacher: Optional[str] = flag(None, "the uniform-state teacher checkpoint (IDLM-Duo's)")
    dcd: Optional[str] = flag(None, "its DCD student (IDLM-DCD's teacher); none: IDLM-Duo only")
    rows: list[str] = flag(list(ROWS), "the rows to run, by name", choices=list(ROWS))
    base: str = flag("", "flags every row adds to the base, in quotes: --base '--lr 3e-5'")
    iters: int = flag(300, "IDLM steps per run", at_least=1)
    steps: list[int] = flag([1, 2, 4], "sampling steps of every row", at_least=1)
    samplers: list[str] = flag(["ancestral", "greedy-tail"], "the samplers")
    num_samples: int = flag(128, "samples per row", at_least=2)
    seed: int = flag(0, "training and sampling seed")
    out_dir: str = flag("out/study", "where the runs go")
    report: str = flag("results/uniform/study.md", "the page the table goes into")


def distill(cfg, name, teacher, out):
    """The finished IDLM run of one row (trained, resumed or reused)."""
    ckpt = out / "ckpt.pt"
    if ckpt.exists() and checkpoint.read(ckpt).get("finished"):
        return ckpt
    command = [sys.executable, str(ROOT / "train.py"), "--distill", "idlm", "--teacher", teacher, "--data",
               "synthetic", "--iters", str(cfg.iters), "--seed", str(cfg.seed), "--eval-every", "0",
               "--eval-samples", "0", "--out-dir", str(out), *shlex.split(cfg.base), *ROWS[name]] + (["--resume"] if ckpt.exists()
                                                                                       else [])
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)
    return ckpt


def entropy_course(out):
    """The student's sample entropy at the first and the last logged step, from log.jsonl."""
    values = [line["student_sample_entropy"] for line in map(json.loads, (out / "log.jsonl").read_text().splitlines())
              if "student_sample_entropy" in line]
    return f"{values[0]:.2f} -> {values[-1]:.2f}" if values else "-"


def evaluate_rows(cfg, entries, judge, sampler, seq_len, scored):
    """quality_rows of (label, checkpoint, steps) entries with one sampler."""
    models = {}
    for _, path, _ in entries:
        models.setdefault(path, checkpoint.load_model(path)[0])
    process = checkpoint.process_of(checkpoint.read(entries[0][1]))
    return quality_rows([(label, models[path], process, steps) for label, path, steps in entries], judge,
                        cfg.num_samples, min(cfg.num_samples, 64), seq_len, cfg.seed, torch.device("cpu"),
                        sampler=make_sampler(sampler), scored=scored)


def cell(row):
    return (f"{row['genppl']:.2f} ({row['genppl_low']:.2f}-{row['genppl_high']:.2f})",
            f"{row['entropy']:.3f} ± {row['entropy_half']:.3f}")


def write_report(path, table):
    """The table between the page's markers (the page made with the markers if missing)."""
    path = Path(path)
    text = path.read_text() if path.exists() else "\n".join(MARKERS) + "\n"
    head, rest = text.split(MARKERS[0], 1)
    tail = rest.split(MARKERS[1], 1)[1]
    path.write_text(f"{head}{MARKERS[0]}\n{table}\n{MARKERS[1]}{tail}")


def main():
    cfg = parse_config(StudyConfig, __doc__.split("\n\n")[0])
    if cfg.teacher is None:
        raise ValueError("give --teacher <a uniform-state teacher of the synthetic source>")
    teacher_ckpt = checkpoint.read(cfg.teacher)
    seq_len, meta = teacher_ckpt["model_config"]["seq_len"], teacher_ckpt["data_meta"]
    teachers = [("IDLM-Duo", cfg.teacher)] + ([("IDLM-DCD", cfg.dcd)] if cfg.dcd else [])
    runs = [(kind, name, distill(cfg, name, path, Path(cfg.out_dir) / kind.lower() / name.replace(" ", "-")
                                 .replace("'", "").replace(",", "")))
            for kind, path in teachers for name in cfg.rows]
    entries = [("teacher", cfg.teacher, s) for s in [*cfg.steps, seq_len]]
    entries += [("DCD", cfg.dcd, s) for s in cfg.steps] if cfg.dcd else []
    entries += [(f"{kind}: {name}", str(ckpt), s) for kind, name, ckpt in runs for s in cfg.steps]
    judge, scored, sources, by_sampler = load_judge("exact", meta, torch.device("cpu")), [], [], {}
    for sampler in cfg.samplers:
        by_sampler[sampler] = evaluate_rows(cfg, entries, judge, sampler, seq_len, scored)
        sources += [{"checkpoint": path, "sampler": sampler} for _, path, _ in entries]
    courses = {f"{kind}: {name}": entropy_course(ckpt.parent) for kind, name, ckpt in runs}
    header = ["model", "steps"] + [f"{s} {c}" for s in cfg.samplers for c in ("GenPPL (95%)", "entropy")]
    lines = ["| " + " | ".join(header + ["student sample entropy, first -> last log"]) + " |",
             "|" + "---|" * (len(header) + 1)]
    for i, (label, _, steps) in enumerate(entries):
        cells = [c for sampler in cfg.samplers for c in cell(by_sampler[sampler][i])]
        lines.append("| " + " | ".join([label, str(steps), *cells, courses.get(label, "-")]) + " |")
    report = Path(cfg.report)
    write_report(report, "\n".join(lines))
    samples = report.parent / "study_samples.jsonl"
    write_samples(samples, scored, meta, sources)
    with open(samples, "rb") as f, gzip.open(f"{samples}.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    samples.unlink()
    print("\n".join(lines))


if __name__ == "__main__":
    run_command(main)
