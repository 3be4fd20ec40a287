"""Duo's Discrete Consistency Distillation (DCD), the teacher of IDLM-DCD (SPEC-teachers A1.5).

Duo Algorithm 1 as its code runs it (Duo-code `Distillation.nll`, `scripts/distil_owt.sh`; the paper's
own text is UNCONFIRMED here). For data x0, a time t and a gap dt:

    s = t - dt,  one shared eps:  w_t = at~_t e_x0 + st~_t eps,  w_s = at~_s e_x0 + st~_s eps,

the deterministic (PF-ODE / DDIM) coupling of the two Gaussian latents through the *data*. The student
sees argmax(w_t) at sigma_t, a frozen copy of it (the teacher of the round) sees argmax(w_s) at sigma_s,
both with discrete inputs, and the student minimises KL(student || teacher) per position ("kl-bwd").
Each round the student is copied into the teacher and dt doubles: dt = 2^round / T_d (Duo: T_d = 512,
5 rounds of 10k steps, gamma in [-4, -1]). The loop, rounds and checkpoints live in distill.py.
"""
import torch
import torch.nn.functional as F

from duo import GaussianSchedule, sigma_input

DCD_GAMMA_RANGE = (-4.0, -1.0)


def check_uniform(process):
    if process.kind != "uniform":
        raise ValueError(f"DCD distills a uniform-state (Duo) teacher; this teacher's process is {process.kind} "
                         "(use --distill sdtt or idlm)")


def round_gap(round_index, base_steps):
    """dt of a round: 2^round / T_d."""
    return 2 ** round_index / base_steps


def coupled_times(t, dt):
    """(t, s = t - dt) with t moved up to [dt, 1] (Duo-code: t <- clip(t + dt))."""
    t = (t.double() + dt).clamp(max=1.0)
    return t, (t - dt).clamp(min=0.0)


def dcd_loss(student, teacher, process, schedule, x, t, dt):
    """KL(student(argmax w_t, sigma_t) || teacher(argmax w_s, sigma_s)) per position, mean (A1.5)."""
    t, s = coupled_times(t, dt)
    onehot = F.one_hot(x, process.vocab_size).float()
    noise = torch.randn_like(onehot)
    w_t, w_s = (schedule.latent(onehot, time, noise) for time in (t, s))
    alpha_t, _ = schedule.alpha_and_slope(t)
    alpha_s, _ = schedule.alpha_and_slope(s)
    log_student = process.log_probs(student(w_t.argmax(-1), sigma_input(alpha_t).to(x.device)))
    with torch.no_grad():
        log_teacher = process.log_probs(teacher(w_s.argmax(-1), sigma_input(alpha_s).to(x.device)))
    return (log_student.exp() * (log_student - log_teacher)).sum(-1).mean()


class RoundLoss:
    """The phase loss of a DCD round: (x, t, u) -> (loss, logs); `start_round` sets its teacher and dt."""

    def __init__(self, student, process, base_steps, gamma_range=DCD_GAMMA_RANGE):
        check_uniform(process)
        self.student, self.process, self.base_steps = student, process, base_steps
        self.schedule = GaussianSchedule(process.vocab_size, *gamma_range)
        self.teacher, self.dt = None, None

    def start_round(self, teacher, round_index):
        self.teacher, self.dt = teacher, round_gap(round_index, self.base_steps)

    def __call__(self, x, t, u):
        return dcd_loss(self.student, self.teacher, self.process, self.schedule, x, t, self.dt), {}
