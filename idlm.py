"""Inverse-distilled Diffusion Language Models (IDLM), for MDLM, Duo (uniform) and DCD teachers.

Three networks start from the teacher: the frozen teacher f*, a trainable fake model f_hat,
and the student G_theta. The student is a denoiser with the teacher's interface whose output
is a point on the simplex per position (carry-over at unmasked inputs), so it samples with
the ordinary multistep sampler. Training alternates (IDLM Algorithm 1):

1. fake step (eq. 10): f_hat learns, with the MDLM loss, to denoise the student's outputs;
2. student step (eq. 11): the student lowers  L(f*, x) - L(f_hat, x)  on its own outputs x.

By Theorem 3.1 the student's objective is zero exactly when its outputs follow the data
distribution that the teacher is optimal for (SPEC.md §6). How the two steps are estimated (the
time window, the gradient, the latents' draws, the loss's scale) is a `Choices`, made from the
command line by distill.IDLM. The loop and optimizers live in train.py.
"""
from dataclasses import dataclass

import torch
from torch.func import functional_call

from diffusion import SAMPLING_EPS


@dataclass(frozen=True)
class Choices:
    """How IDLM's steps are estimated (SPEC.md §6.5 lists each choice with its flag and default).

    times   None: the student's input time t~ and the loss time t range over [0, 1]; (lo, hi): both are
            drawn in [lo, hi] (--noise-window, given as the alphas at its ends)
    score   add the score-function term of the discrete loss latent (the exact gradient, `relaxed_gap`)
    draws   loss latents z_t per student output; with `score`, each one's control variate is the mean
            gap of the others
    scale   what the losses are multiplied by: 1 per token (ours), L summed over positions (IDLM-code)
    """
    times: tuple = None
    score: bool = False
    draws: int = 1
    scale: float = 1.0


def within(t, times):
    """Times t in [0, 1] moved into the window `times` (unchanged without one)."""
    return t if times is None else times[0] + (times[1] - times[0]) * t


def student_simplex(student, x_t, t, process):
    """G_theta(x_t, t): a distribution over the V real tokens per position (float32)."""
    return process.denoise(student, x_t, t)[..., :process.vocab_size].exp()


def student_output(student, x, t, u, process, choices):
    """Algorithm 1's SamplingFunc, then the student: x_t~ from data at time t~ (in the window),
    then G_theta(x_t~, t~); and a fresh loss time t for each sequence.

    The process decides the latents. MDLM and the uniform process (the default) draw discrete
    ones; the student sees discrete z_t~ (for the uniform process the tau -> 0 limit of Duo's soft
    input w~/tau, IDLM App. C.2). With --tau, `processes.duo.Curriculum` gives IDLM-code's Gaussian
    latents instead: the student sees w~/tau (SPEC.md §6.4)."""
    x0_soft = student_simplex(student, process.forward_sample(x, within(t, choices.times), u),
                              within(t, choices.times), process)
    t_loss = within(SAMPLING_EPS + (1 - SAMPLING_EPS) * torch.rand(x.shape[0], device=x.device), choices.times)
    return x0_soft, t_loss


def weights_fixed(model):
    """The model as a function of its input only: its weights enter as constants, so a student step
    differentiates the frozen teacher and the fake w.r.t. a soft input (Duo's w_t / tau) and never
    gives their weights a gradient. On discrete inputs nothing is recorded, as under no_grad."""
    weights = {name: p.detach() for name, p in model.named_parameters()}
    return lambda *inputs: functional_call(model, weights, inputs)


def teacher_fake_gap(log_teacher, log_fake, x0_soft, z_t, t, process, shares=False):
    """IDLM eq. 11, the student's objective: L(f*, x0) - L(f_hat, x0), the teacher's soft loss
    minus the fake's on the same z_t (SPEC.md §6.2). This is its definition. Where the two losses
    share large terms that would cancel in floating point, the process gives the same difference
    as one sum, `process.loss_gap` (MDLM, uniform; tests/test_idlm.py checks it equals this
    definition by value and gradient); where it gives none (SEDD), the difference is taken here.
    shares: each sequence's share [N] (they add up to the gap).

    On discrete z_t both log-output tensors are constants: this is the gradient with the law of z_t
    held fixed, MDLM's w(t) (log f_hat - log f*) at masked positions, the uniform process's explicit
    xbar terms of `processes.uniform.udlm_loss_gap`. `relaxed_gap` adds the term of the law."""
    if process.loss_gap is not None:
        return process.loss_gap(log_teacher, log_fake, x0_soft, z_t, t, shares=shares)
    return process.soft_loss(log_teacher, x0_soft, z_t, t, shares) - process.soft_loss(log_fake, x0_soft, z_t, t, shares)


def relaxed_gap(x0_soft, t, process, log_outputs, choices):
    """The gap E_{z_t ~ q(.|x0)} [L(f*, x0; z_t) - L(f_hat, x0; z_t)] at the student's output x0, as a
    loss whose value is the mean over `choices.draws` latents per output and whose gradient w.r.t.
    x0 is, with `choices.score`, an unbiased estimate of the expectation's gradient (SPEC.md §6.4).

    The law q(z_t | x0) depends on x0 (uniform: Cat(alpha x0 + (1 - alpha)/V); absorbing: the tokens
    left unmasked are drawn from x0), and the networks' outputs depend on z_t. Differentiating the
    expectation gives two terms: E[d gap / d x0 at fixed z_t] (`teacher_fake_gap`) and the score-
    function term E[gap(z_t) d log q(z_t | x0) / d x0]. For the second, each sequence's share of the
    gap (less its control variate, the mean share of the other draws of the same output, which does
    not depend on this draw, so the estimate stays unbiased) weighs its latent's log-likelihood
    (`process.latent_log_prob`). The term enters as s - stop_gradient(s): zero in value, so the
    logged loss is the gap itself. log_outputs(z_t, t) -> (log f*, log f_hat)."""
    k = choices.draws
    x0, t = (x0_soft.repeat(k, 1, 1), t.repeat(k)) if k > 1 else (x0_soft, t)
    z_t = process.forward_sample_soft(x0, t)
    log_teacher, log_fake = log_outputs(z_t, t)
    with torch.no_grad():
        logs = {"teacher_loss": choices.scale * process.soft_loss(log_teacher, x0, z_t, t).item(),
                "fake_loss_on_student": choices.scale * process.soft_loss(log_fake, x0, z_t, t).item()}
    if not choices.score:
        return teacher_fake_gap(log_teacher, log_fake, x0, z_t, t, process), logs
    shares = teacher_fake_gap(log_teacher, log_fake, x0, z_t, t, process, shares=True)
    per_draw = shares.detach().view(k, -1)
    others = (per_draw.sum(0, keepdim=True) - per_draw) / (k - 1) if k > 1 else torch.zeros_like(per_draw)
    score = ((per_draw - others).reshape(-1) * process.latent_log_prob(x0, z_t, t)).sum()
    return shares.sum() + score - score.detach(), logs


def fake_loss(fake, student, x, t, u, process, choices=Choices()):
    """Fake step (IDLM eq. 10): the process's loss of f_hat on the student's detached outputs."""
    with torch.no_grad():
        x0_soft, t_loss = student_output(student, x, t, u, process, choices)
        z_t = process.forward_sample_soft(x0_soft, t_loss)
    return choices.scale * process.soft_loss(process.loss_log_outputs(fake, z_t, t_loss), x0_soft, z_t, t_loss)


def student_loss(student, teacher, fake, x, t, u, process, choices=Choices()):
    """Student step (IDLM eq. 11). Returns (loss, logs); logs has the teacher's and the fake's
    losses on the student's outputs, whose difference (the loss) is the teacher-fake gap."""
    x0_soft, t_loss = student_output(student, x, t, u, process, choices)
    teacher, fake = weights_fixed(teacher), weights_fixed(fake)

    def log_outputs(z_t, t):
        return process.loss_log_outputs(teacher, z_t, t), process.loss_log_outputs(fake, z_t, t)

    loss, logs = relaxed_gap(x0_soft, t_loss, process, log_outputs, choices)
    return choices.scale * loss, logs
