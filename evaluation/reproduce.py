"""Reproduce the papers' headline claims at small scale, end to end, into results/.

    python -m evaluation.reproduce --quick      # both settings: 34 minutes measured on a 2-core CPU
    python -m evaluation.reproduce              # 4-8x longer training: an estimated 2-4 hours on a CPU
    python -m evaluation.reproduce --quick --settings synthetic256   # L = 256, the papers' regime: 26 minutes

For each setting (the synthetic source, where GenPPL is exact; Shakespeare, judged by our AR
model) it trains the MDLM teacher, the AR judge (Shakespeare), iterated SDTT and IDLM with
train.py, then sweeps GenPPL / entropy / self-BLEU over sampling steps and runs the LAMBADA
protocol with evaluation/sweep.py. It writes results/<setting>/{sweep,lambada}.{csv,md}, genppl.png
and claims.md, which states which claims held (results/reproduce.md reads them). Finished runs
are reused: a second call only re-evaluates, and a killed call resumes.
"""
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from evaluation import frontier, sweep
from loading import checkpoint
from plumbing import cli

ROOT = Path(__file__).resolve().parents[1]

# Per setting: the flags every train.py call shares, per-method steps (quick, full), and the temperatures of the
# teacher's frontier (SPEC.md §7.5), low enough on the synthetic source to reach its students' entropy.
SETTINGS = {
    "synthetic": dict(common=["--data", "synthetic", "--size", "tiny", "--seq-len", "64"],
                      iters={"mdlm": (1500, 6000), "sdtt": (60, 400), "idlm": (300, 2000), "mmd": (100, 400)},
                      temperatures=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]),
    # the papers' regime, where the 16 tokens of an L/16-step step are rarely neighbours (results/reproduce.md)
    "synthetic256": dict(common=["--data", "synthetic", "--size", "tiny", "--batch-size", "8", "--seq-len", "256"],
                         iters={"mdlm": (1500, 6000), "sdtt": (60, 400), "idlm": (300, 2000), "mmd": (100, 400)},
                         temperatures=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]),
    "shakespeare": dict(common=["--data", "shakespeare", "--size", "tiny", "--seq-len", "128"],
                        iters={"mdlm": (800, 5000), "ar": (300, 2000), "sdtt": (80, 500), "idlm": (250, 2000),
                               "mmd": (100, 400)},
                        temperatures=[0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]),
}


@dataclass
class ReproduceConfig:
    quick: bool = cli.flag(False, "the short setting (34 minutes measured on 2 CPU cores)")
    settings: list[str] = cli.flag(["synthetic", "shakespeare"], "which settings to run (synthetic256 only when "
                                   "named: 26 more minutes with --quick)", choices=list(SETTINGS))
    out_dir: str = cli.flag("out/repro", "checkpoints (large, not committed)")
    results_dir: str = cli.flag("results", "tables and figures (small, committed)")
    num_samples: int = cli.flag(64, "samples per sweep row", at_least=1)


def call(*args):
    print("+", " ".join(args), flush=True)
    if subprocess.run([sys.executable, *args], cwd=ROOT).returncode != 0:
        raise ValueError(f"this step failed: python {' '.join(args)}")


def finished(path):
    return path.exists() and checkpoint.read(path).get("finished", False)


def train(method, setting, cfg, extra=()):
    """Train (or reuse, or resume) one model; returns its checkpoint path."""
    spec = SETTINGS[setting]
    out = Path(cfg.out_dir) / setting / method
    iters = spec["iters"][method][0 if cfg.quick else 1]
    kind = ["--distill", method] if method in ("sdtt", "idlm", "mmd") else ["--model", method]
    if not finished(out / "ckpt.pt"):
        call("train.py", *kind, *spec["common"], "--iters", str(iters), "--out-dir", str(out), "--resume",
             *extra)
    return out / "ckpt.pt"


MAUVE_SAMPLES = 512  # mauve-text quantizes into a tenth as many clusters: 51


def check_claims(setting, sweep_rows, lambada_rows, labels, seq_len, teacher_frontier):
    """The issue's targets, checked on the sweep: lines of markdown. labels: sweep label of the
    teacher, "sdtt" (every round's student at its own steps, as the SDTT paper evaluates them),
    "sdtt_final" (the last round's student: LAMBADA), "idlm" and, on the synthetic source, "exact".
    Every comparison is at equal entropy, on the teacher's frontier over temperatures (SPEC.md §7.5):
    a student against the frontier (`frontier.verdict`), IDLM against SDTT (`frontier.compare`)."""
    def row(label, steps):
        return next(r for r in sweep_rows if r["label"] == labels[label] and int(r["steps"]) == steps)
    L = seq_len
    teacher = row("teacher", L)
    lines = [f"### {setting} (L = {L}; teacher at {L} steps: GenPPL {teacher['genppl']:.2f}, "
             f"entropy {teacher['entropy']:.2f})", ""]
    students = [name for name in ("sdtt", "idlm", "mmd") if name in labels]
    for student in students:
        s = row(student, L // 16)
        word, at = frontier.verdict(s, teacher_frontier)
        low, high = frontier.entropy_interval(s)
        lines.append(f"- {student.upper()} at L/16 = {L // 16} steps: GenPPL {s['genppl']:.2f} "
                     f"({s['genppl_low']:.2f}-{s['genppl_high']:.2f}), entropy {s['entropy']:.2f} "
                     f"({low:.2f}-{high:.2f}; "
                     f"{100 * s['entropy'] / teacher['entropy']:.1f}% of the teacher's) -> at equal entropy: **{word}**"
                     + (f" (the teacher's frontier there: {at:.2f})" if at else ""))
    pairs = [("idlm", "sdtt")] + [("mmd", other) for other in ("sdtt", "idlm") if "mmd" in labels]
    for (a, b), steps in ((pair, steps) for pair in pairs for steps in (L // 16, L // 32)):
        i, s = row(a, steps), row(b, steps)
        word = frontier.compare(i, s, teacher_frontier)
        lines.append(f"- {a.upper()} vs {b.upper()} at {steps} steps: GenPPL {i['genppl']:.2f} vs {s['genppl']:.2f} at "
                     f"entropy {i['entropy']:.2f} vs {s['entropy']:.2f} -> {a.upper()} at equal entropy: **{word}** "
                     f"(target: better or equal)")
    if "exact" in labels:
        exact_full, exact_few = (row("exact", steps)["genppl"] for steps in (L, L // 16))
        lines.append(f"- Ceiling: the exact denoiser (the perfect MDLM teacher) reaches GenPPL {exact_few:.2f} at "
                     f"L/16 = {L // 16} steps and {exact_full:.2f} at L: a student at L/16 that matches the teacher "
                     f"at L must beat the perfect MDLM's few-step sampler {exact_few / teacher['genppl']:.1f}x")
    acc = {r["label"]: r["accuracy"] for r in lambada_rows}
    names = {"teacher": "teacher", "sdtt_final": "SDTT (last round)", "idlm": "IDLM", "mmd": "MMD",
             "exact": "exact denoiser"}
    lines.append("- LAMBADA-style one-pass suffix accuracy: " + ", ".join(
        f"{names[name]} {acc[labels[name]]:.3f}" for name in names if name in labels))
    return lines + [""]


def main():
    cfg = cli.parse_config(ReproduceConfig, __doc__.split("\n\n")[0])
    if any(importlib.util.find_spec(name) is None for name in ("sacrebleu", "mauve")):  # now, not after hours
        raise ValueError("evaluation.reproduce reports self-BLEU and MAUVE, which need sacrebleu and mauve-text: "
                         "pip install -r requirements-eval.txt")
    results = Path(cfg.results_dir)
    for setting in cfg.settings:
        seq_len = int(SETTINGS[setting]["common"][-1])
        synthetic = setting.startswith("synthetic")
        teacher = train("mdlm", setting, cfg)
        judge = ["--judge", "exact"] if synthetic else ["--judge", str(train("ar", setting, cfg))]
        sdtt = train("sdtt", setting, cfg, ["--teacher", str(teacher), *judge])
        idlm = train("idlm", setting, cfg, ["--teacher", str(teacher), *judge])
        mmd = train("mmd", setting, cfg, ["--teacher", str(teacher), *judge])
        final = sdtt.parent / f"round{checkpoint.read(sdtt)['round']}.pt"  # the last round's student
        labels = {"teacher": str(teacher), "sdtt": sweep.rounds_label(sdtt.parent), "sdtt_final": str(final),
                  "idlm": str(idlm), "mmd": str(mmd)}
        if synthetic:  # the reference: the perfect teacher, sampled in as many steps
            labels["exact"] = sweep.EXACT
        ckpts = [label for name, label in labels.items() if name != "sdtt"]  # "sdtt" comes from --rounds
        steps = [str(seq_len // d) for d in (32, 16, 8, 4, 2, 1)]
        out = results / setting
        call("-m", "evaluation.sweep", "--ckpts", *ckpts, "--rounds", str(sdtt.parent), "--steps", *steps, *judge,
             "--num-samples", str(cfg.num_samples), "--data", setting, "--lambada", "--lambada-source", "local",
             "--self-bleu", "--out-dir", str(out))
        temperatures = [str(T) for T in SETTINGS[setting]["temperatures"]]
        call("-m", "evaluation.sweep", "--ckpts", labels["teacher"], *([] if synthetic else [judge[1]]), "--steps",
             str(seq_len), "--temperatures", *temperatures, *judge, "--num-samples", str(cfg.num_samples), "--data",
             setting, "--out-dir", str(out / "frontier"))
        rows, curve = frontier.read_sweep(out / "sweep.csv"), frontier.read_sweep(out / "frontier" / "sweep.csv")
        teacher_curve = [r for r in curve if r["label"] == labels["teacher"]]
        lines = check_claims(setting, rows, frontier.read_sweep(out / "lambada.csv"), labels, seq_len, teacher_curve)
        (out / "claims.md").write_text("\n".join(lines))
        if not synthetic:  # MAUVE against held-out text, with enough samples for 51 clusters (SPEC.md §7.4)
            call("-m", "evaluation.sweep", "--ckpts", labels["teacher"], labels["idlm"], labels["mmd"],
                 "--rounds", str(sdtt.parent),
                 "--steps", str(seq_len // 16), str(seq_len), *judge, "--num-samples", str(MAUVE_SAMPLES), "--mauve",
                 "--data", setting, "--out-dir", str(out / "mauve"))
        students = [r for r in rows if r["label"] in (labels["sdtt"], labels["idlm"], labels["mmd"])
                    and r["steps"] in (seq_len // 16, seq_len // 32)]
        frontier.plot_frontier(curve + students, {judge[1]} if not synthetic else set(), out / "frontier" / "frontier.png")
        print("\n".join(lines))
    print("each setting's claims: results/<setting>/claims.md; what they mean: results/reproduce.md")


if __name__ == "__main__":
    cli.run_command(main)
