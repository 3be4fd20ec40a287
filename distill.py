"""Distillation methods as plans that train.py's loop runs: iterated SDTT, IDLM and DCD.

    python train.py --distill sdtt          # iterated SDTT of the embedded teacher (made first if missing)
    python train.py --distill idlm --teacher out/mdlm/ckpt.pt --judge out/ar/ckpt.pt
    python train.py --distill idlm --teacher out/uniform/ckpt.pt   # IDLM-Duo (a uniform-state teacher)
    python train.py --distill idlm --teacher out/uniform/ckpt.pt --tau 0.1   # IDLM-code's Gaussian variant
    python train.py --distill dcd           # Duo's DCD of the uniform default teacher (out/uniform)

A method is a student trained in rounds (`Method`): each round has a teacher, and phases (an
optimizer and a loss each) that every training step runs once. train.run is the one skeleton that
runs any method: resume, rounds, steps, checkpoints. This file holds what differs between methods,
loads the teacher, checks that a method applies to it, and makes the final table: GenPPL and
entropy of the teacher and of every student at the steps it was distilled for.
"""
import copy
import dataclasses
from pathlib import Path

import torch
from tqdm import tqdm

import evaluate
import idlm
import sdtt
from loading import checkpoint
from processes import duo

FULL_GPT2 = {"kind": "gpt2", "gpt2_ids": None}  # the data_meta of MDLM's OpenWebText models
PAPER_JUDGE = "gpt2-large"


def trainable_copy(model):
    """A copy that trains: a student, or IDLM's fake model."""
    return copy.deepcopy(model).train().requires_grad_(True)


def frozen(model):
    """A copy in eval mode that takes no gradient: a teacher, or the fixed half of a step."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- the methods

class Method:
    """What train.run needs of a method. A subclass sets:

    kind      the checkpoint kind of its student ("sdtt", "idlm", "dcd"; pretraining: "mdlm", ...)
    student   the trained network, whose EMA is sampled and whose weights are saved as "model"
    phases    [(name, network, lr, loss builder)]: each an optimizer stepped once per training step;
              the builder takes the (possibly DDP-wrapped) network and returns loss(x, t, u) -> (loss, logs)
    rounds    how many rounds of --iters steps
    passes    (training passes, forward passes) of one step, for its FLOPs (plumbing/flops.py)
    round_files  whether each round's student is kept as round{j}.pt (the next round's teacher)
    streams   (optional) how many steps a phase's optimizer takes per training step, and on which batches

    and may override the hooks below, which do nothing by default."""
    rounds, round_files = 1, False
    streams = {}  # phase name -> the batches (0: the step's; k: a batch of its own) of its optimizer steps

    def start_round(self, j, phases, out_dir, fresh):
        """Before round j's first step (fresh: the round starts at step 0, not from a resume)."""

    def restore(self, state):
        """Load what `fields` saved beyond the student, optimizers and EMA."""

    def diagnostics(self, x, t, u):
        """What log.jsonl gets beside the losses every --log-every steps, from a batch of data."""
        return {}

    def fields(self, j):
        """Method-specific checkpoint entries of round j."""
        return {}

    def label(self, j):
        return self.kind

    def students(self, out_dir):
        """The final table's rows: [(label, checkpoint path, sampling steps)]."""
        return []


class SDTT(Method):
    """Iterated SDTT (section 3.1): round j distills the round j-1 student (round 0: the pretrained
    teacher) into a student that samples with 1/n of its teacher's steps (SPEC.md §3.2)."""
    kind, round_files = "sdtt", True

    def __init__(self, cfg, teacher, process):
        self.cfg, self.rounds = cfg, cfg.rounds
        self.schedule = sdtt.step_schedule(cfg.start_steps, cfg.teacher_steps, cfg.rounds)
        self.student, self.teacher = trainable_copy(teacher), frozen(teacher)   # Algorithm 2, line 4
        self.phases = [(cfg.divergence, self.student, cfg.lr, lambda m: sdtt.SDTTLoss(
            m, process, cfg.teacher_steps, cfg.divergence, cfg.teacher_sampler))]
        self.passes = (1, cfg.teacher_steps)  # the student's training pass, the teacher's target steps

    def start_round(self, j, phases, out_dir, fresh):
        """Round j's teacher is round j-1's student, as saved at its end (its EMA with --ema-teacher)."""
        if j > 0:
            saved = checkpoint.read(Path(out_dir) / f"round{j - 1}.pt")
            self.teacher.load_state_dict(saved["ema" if self.cfg.ema_teacher else "model"])
        if self.cfg.reset_optimizer and fresh:
            phases[0].optimizer.state.clear()
        phases[0].loss.set_teacher(self.teacher, self.schedule[j])

    def fields(self, j):
        return checkpoint.distilled_for(self.schedule[j + 1], j, self.schedule[j])

    def label(self, j):
        return f"sdtt round {j} ({self.schedule[j]}->{self.schedule[j + 1]} steps)"

    def students(self, out_dir):
        return [(f"SDTT round {j}", Path(out_dir) / f"round{j}.pt", self.schedule[j + 1]) for j in range(self.rounds)]


def idlm_latents(cfg, process):
    """(the latents IDLM draws, its `idlm.Choices`) from the flags (SPEC.md §6.5). --noise-window gives
    the alphas at the window's ends: times of the process's schedule for discrete latents, Duo's gammas
    at the vocabulary for Gaussian ones (--tau)."""
    window = sorted(cfg.noise_window, reverse=True) if cfg.noise_window else None
    times, latents = None, process
    if cfg.tau:
        gammas = [duo.gamma_of_alpha(a, process.vocab_size) for a in window] if window else duo.GAMMA_RANGE
        latents = duo.Curriculum(process, cfg.tau, duo.GaussianSchedule(process.vocab_size, *gammas))
    elif window:
        times = tuple(process.schedule.time_of(a) for a in window)
    scale = float(cfg.seq_len) if cfg.loss_per == "sequence" else 1.0
    return latents, idlm.Choices(times, cfg.idlm_gradient == "exact", cfg.latent_draws, scale)


class IDLM(Method):
    """IDLM Algorithm 1: --fake-steps fake-model steps (eq. 10), then a student step (eq. 11), SPEC.md
    §6.1. With --tau, the uniform process's latents are IDLM-code's Gaussian ones
    (processes.duo.Curriculum: inexact, SPEC.md §6.4); the other choices are `idlm_latents`'."""
    kind = "idlm"

    def __init__(self, cfg, teacher, process):
        self.cfg, self.teacher = cfg, frozen(teacher)
        self.student, self.fake = trainable_copy(teacher), trainable_copy(teacher)
        self.latents, self.choices = latents, choices = idlm_latents(cfg, process)
        self.phases = [
            ("fake", self.fake, cfg.fake_lr,
             lambda m: lambda x, t, u: (idlm.fake_loss(m, self.student, x, t, u, latents, choices), {})),
            ("student", self.student, cfg.lr,
             lambda m: lambda x, t, u: idlm.student_loss(m, self.teacher, self.fake, x, t, u, latents, choices))]
        fresh = cfg.fake_batch == "fresh"
        self.streams = {"fake": tuple(range(1, cfg.fake_steps + 1)) if fresh else (0,) * cfg.fake_steps}
        # a fake step: a student forward, a fake training pass; the student step: a training pass, the latents'
        # draws of two forwards
        self.passes = (1 + cfg.fake_steps, cfg.fake_steps + 2 * choices.draws)
        self.steps = sorted({max(1, cfg.seq_len // 16), max(1, cfg.seq_len // 32)}, reverse=True)  # L/16, L/32
        self.first_entropy = None

    def restore(self, state):
        self.fake.load_state_dict(state["fake"])

    @torch.no_grad()
    def diagnostics(self, x, t, u):
        """What shows a collapse coming, on a batch of data: the student's output entropy per position and
        the entropy of a sample drawn from it (as the final table measures it), and the fake's and the
        teacher's losses on the data (a fake that drifts from the data is worse there than the teacher)."""
        with evaluate.eval_mode(self.student), evaluate.eval_mode(self.fake):
            x0, _ = idlm.student_output(self.student, x, t, u, self.latents, self.choices)
            tokens = torch.distributions.Categorical(probs=x0.double()).sample()
            losses = {}
            for name, model in (("fake", self.fake), ("teacher", self.teacher)):
                with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                    torch.manual_seed(0)  # the same draws for both
                    losses[f"{name}_loss_on_data"] = self.latents.loss(model, x, t, u).item()
        found = {"student_output_entropy": -(x0 * x0.clamp_min(1e-30).log()).sum(-1).mean().item(),
                 "student_sample_entropy": evaluate.token_entropy(tokens).mean().item(), **losses}
        self.first_entropy = self.first_entropy or found["student_sample_entropy"]
        if found["student_sample_entropy"] < 0.5 * self.first_entropy:
            tqdm.write(f"warning: the student's sample entropy fell from {self.first_entropy:.2f} to "
                       f"{found['student_sample_entropy']:.2f} nats: IDLM is collapsing (see SPEC.md §6.6)")
        return found

    def fields(self, j):
        latent = f"gaussian-argmax, tau = {self.cfg.tau} (inexact)" if self.cfg.tau else "exact relaxation"
        return {"fake": self.fake.state_dict(), "idlm_latent": latent,
                **checkpoint.distilled_for(self.steps[-1], 0, self.cfg.seq_len)}  # the teacher's: L steps

    def students(self, out_dir):
        return [("IDLM", Path(out_dir) / "ckpt.pt", s) for s in self.steps]


class DCD(Method):
    """Duo's DCD (processes/duo.py, SPEC.md §4.6): round j trains the student against a frozen copy
    of itself at gap dt = 2^j / T_d (T_d = --start-steps; default 512 at full size, L/2 on the CPU
    presets); each round's teacher is the previous round's student."""
    kind, round_files = "dcd", True
    passes = (1, 1)  # the student's training pass, the frozen copy's forward

    def __init__(self, cfg, teacher, process):
        self.cfg, self.rounds = cfg, cfg.rounds
        self.base = cfg.start_steps or (512 if teacher.config.n_embd >= 768 else max(1, cfg.seq_len // 2))
        self.student, self.teacher = trainable_copy(teacher), frozen(teacher)
        self.phases = [("dcd", self.student, cfg.lr, lambda m: duo.DCDLoss(m, process))]
        self.steps = max(1, cfg.seq_len // 16)

    def start_round(self, j, phases, out_dir, fresh):
        """Duo copies the student into the teacher at each round's start: round j-1's raw weights."""
        if j > 0:
            self.teacher.load_state_dict(checkpoint.read(Path(out_dir) / f"round{j - 1}.pt")["model"])
        phases[0].loss.set_teacher(self.teacher, duo.round_gap(j, self.base))

    def fields(self, j):
        return checkpoint.distilled_for(self.steps, j, self.cfg.seq_len)  # the teacher's reference: L steps

    def label(self, j):
        return f"dcd round {j} (dt = {duo.round_gap(j, self.base):.4f})"

    def students(self, out_dir):
        return [("DCD", Path(out_dir) / "ckpt.pt", self.steps)]


METHODS = {"sdtt": SDTT, "idlm": IDLM, "dcd": DCD}


def check_method(method, process, tau=None):
    """One clear line where a method (or --tau) does not apply to the teacher's process: the one
    place these are checked."""
    if tau and (method not in (None, "idlm") or process is None or process.family != "uniform"):
        here = f"--distill {method}" if method else "pretraining"
        what = "an AR model" if process is None else f"the {process.name} process"
        raise ValueError(f"--tau (Duo's Gaussian soft inputs) applies to pretraining with --process uniform and to "
                         f"--distill idlm of a uniform-state teacher (here: {here}, {what})")
    if method == "sdtt" and not process.has_mask:
        raise ValueError("SDTT distills an absorbing teacher, with a MASK state (MDLM or SEDD); this teacher is "
                         f"{process.name}: use --distill idlm or dcd")
    if method == "dcd" and process.family != "uniform":
        raise ValueError(f"DCD distills a uniform-state (Duo) teacher; this teacher's process is {process.name} "
                         "(use --distill sdtt or idlm)")


# ----------------------------------------------------------------------------- teacher and final table

def load_teacher(path, cfg, device):
    """(teacher, its process, its checkpoint, cfg with the teacher's vocabulary, L (or the shorter L
    the user gave) and process family). The process the checkpoint records wins; --process only
    says what a bare state dict is, and is checked against a recorded one."""
    teacher, ckpt = checkpoint.load_model(path, kinds=checkpoint.DIFFUSION_KINDS, device=device, process=cfg.process,
                                          weights=cfg.teacher_weights or "ema")
    if (cfg.seq_len or 0) > teacher.config.seq_len:
        raise ValueError(f"--seq-len {cfg.seq_len} is longer than the teacher's L = {teacher.config.seq_len}")
    process, vocab = checkpoint.process_of(ckpt), ckpt["data_meta"].get("gpt2_ids")
    cfg = dataclasses.replace(cfg, seq_len=cfg.seq_len or teacher.config.seq_len, process=process.family,
                              vocab_size=len(vocab) + 1 if vocab else teacher.config.vocab_size)
    return teacher, process, ckpt, cfg


def teacher_defaults(cfg, teacher_ckpt, main):
    """A teacher with GPT-2's full vocabulary is MDLM's OpenWebText setting: unless given, --data
    is openwebtext and --judge gpt2-large (L is the teacher's unless given). Said in one line."""
    if teacher_ckpt["data_meta"] != FULL_GPT2:
        return cfg
    filled = {name: value for name, value in (("data", "openwebtext"), ("judge", PAPER_JUDGE))
              if getattr(cfg, name) is None}
    if main:
        chosen = ", ".join(f"--{name} {value}" for name, value in filled.items())
        print(f"the teacher has GPT-2's full vocabulary (MDLM's OpenWebText setting): L = {cfg.seq_len}"
              + (f", {chosen} (give the flags to change them)" if chosen else ""))
    return dataclasses.replace(cfg, **filled)


def final_table(cfg, device, judge_spec, judge, teacher, process, students, teacher_path, data_meta):
    """GenPPL and entropy of the teacher at L, L/4, L/16, L/32 steps and of each student at
    its steps; printed, and written to <out_dir>/table.md, with every sample scored in
    <out_dir>/samples.jsonl (evaluate.write_samples)."""
    L = cfg.seq_len
    entries = [("teacher", teacher, process, s) for s in (L, L // 4, L // 16, L // 32) if s >= 1]
    paths = [teacher_path] * len(entries)
    for label, path, steps in students:
        model, _ = checkpoint.load_model(path, device=device)
        entries.append((label, model, process, steps))
        paths.append(str(path))
    scored = []
    rows = evaluate.quality_rows(entries, judge, cfg.eval_samples, min(cfg.eval_samples, 32), L, cfg.seed, device,
                                 scored=scored)
    table = evaluate.markdown_table(rows, ["label", "steps", "genppl", "entropy", "nfe"])
    print(f"\nGenPPL (judge: {judge_spec}) and entropy, {cfg.eval_samples} samples of {L} tokens:\n{table}")
    (Path(cfg.out_dir) / "table.md").write_text(table + "\n")
    evaluate.write_samples(Path(cfg.out_dir) / "samples.jsonl", scored, data_meta,
                           [{"checkpoint": path, "sampler": process.default_sampler} for path in paths])
