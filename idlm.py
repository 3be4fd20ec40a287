"""Inverse-distilled Diffusion Language Models (IDLM), for MDLM, Duo (uniform) and DCD teachers.

Three networks start from the teacher: the frozen teacher f*, a trainable fake model f_hat,
and the student G_theta. The student is a denoiser with the teacher's interface whose output
is a point on the simplex per position (carry-over at unmasked inputs), so it samples with
the ordinary multistep sampler. Training alternates (IDLM Algorithm 1):

1. fake step (eq. 10): f_hat learns, with the MDLM loss, to denoise the student's outputs;
2. student step (eq. 11): the student lowers  L(f*, x) - L(f_hat, x)  on its own outputs x.

By Theorem 3.1 the student's objective is zero exactly when its outputs follow the data
distribution that the teacher is optimal for (SPEC.md §6). The loop and optimizers live in train.py.
"""
import torch
from torch.func import functional_call

from diffusion import SAMPLING_EPS


def student_simplex(student, x_t, t, process):
    """G_theta(x_t, t): a distribution over the V real tokens per position (float32)."""
    return process.denoise(student, x_t, t)[..., :process.vocab_size].exp()


def noised_student_output(student, x, t, u, process):
    """Algorithm 1's SamplingFunc, then the student: x_t~ from data at time t~, then
    G_theta(x_t~, t~); then a fresh t and the loss latent z_t ~ q(. | x0_soft).

    The process decides both latents. MDLM and the uniform process (the default) draw discrete
    z_t, which carry no gradient: for MDLM only masked positions carry loss, and which positions
    are masked does not depend on x0. For the uniform process the student sees discrete z_t~ (the
    tau -> 0 limit of Duo's soft input w~/tau, IDLM App. C.2: UNCONFIRMED simplification) and the
    loss z_t ~ Cat(alpha_t x0 + (1-alpha_t)/V), the exact relaxation (SPEC.md §6.4). With --tau,
    `processes.duo.Curriculum` gives IDLM-code's Gaussian latents instead: the student sees w~/tau,
    and the loss latent w_t = at~ x0 + st~ eps keeps x0's gradient (inexact for a soft x0, SPEC.md §6.4).
    """
    x_noisy = process.forward_sample(x, t, u)
    x0_soft = student_simplex(student, x_noisy, t, process)
    t_loss = SAMPLING_EPS + (1 - SAMPLING_EPS) * torch.rand(x.shape[0], device=x.device)
    z_t = process.forward_sample_soft(x0_soft, t_loss)
    return x0_soft, z_t, t_loss


def weights_fixed(model):
    """The model as a function of its input only: its weights enter as constants, so a student step
    differentiates the frozen teacher and the fake w.r.t. a soft input (Duo's w_t / tau) and never
    gives their weights a gradient. On discrete inputs nothing is recorded, as under no_grad."""
    weights = {name: p.detach() for name, p in model.named_parameters()}
    return lambda *inputs: functional_call(model, weights, inputs)


def teacher_fake_gap(log_teacher, log_fake, x0_soft, z_t, t, process):
    """IDLM eq. 11, the student's objective: L(f*, x0) - L(f_hat, x0), the teacher's soft loss
    minus the fake's on the same z_t (SPEC.md §6.2). This is its definition. Where the two losses
    share large terms that would cancel in floating point, the process gives the same difference
    as one sum, `process.loss_gap` (MDLM, uniform; tests/test_idlm.py checks it equals this
    definition by value and gradient); where it gives none (SEDD), the difference is taken here.

    On discrete z_t both log-output tensors are constants: MDLM's gradient w.r.t. x0 is
    w(t) (log f_hat - log f*) at masked positions (per token) and zero elsewhere; the uniform
    process's comes through the explicit xbar terms of `processes.uniform.udlm_loss_gap`.
    UNCONFIRMED (uniform, default): z_t is discrete, so the gradient of the law of z_t w.r.t. x0 is
    not followed, as in IDLM's public code at small tau (SPEC.md §6.4)."""
    if process.loss_gap is not None:
        return process.loss_gap(log_teacher, log_fake, x0_soft, z_t, t)
    return process.soft_loss(log_teacher, x0_soft, z_t, t) - process.soft_loss(log_fake, x0_soft, z_t, t)


def fake_loss(fake, student, x, t, u, process):
    """Fake step (IDLM eq. 10): the process's loss of f_hat on the student's detached outputs."""
    with torch.no_grad():
        x0_soft, z_t, t_loss = noised_student_output(student, x, t, u, process)
    return process.soft_loss(process.loss_log_outputs(fake, z_t, t_loss), x0_soft, z_t, t_loss)


def student_loss(student, teacher, fake, x, t, u, process):
    """Student step (IDLM eq. 11). Returns (loss, logs); logs has the teacher's and the fake's
    losses on the student's outputs, whose difference (the loss) is the teacher-fake gap."""
    x0_soft, z_t, t_loss = noised_student_output(student, x, t, u, process)
    log_teacher = process.loss_log_outputs(weights_fixed(teacher), z_t, t_loss)
    log_fake = process.loss_log_outputs(weights_fixed(fake), z_t, t_loss)
    with torch.no_grad():
        logs = {"teacher_loss": process.soft_loss(log_teacher, x0_soft, z_t, t_loss).item(),
                "fake_loss_on_student": process.soft_loss(log_fake, x0_soft, z_t, t_loss).item()}
    return teacher_fake_gap(log_teacher, log_fake, x0_soft, z_t, t_loss, process), logs
