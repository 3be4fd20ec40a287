"""Inverse-distilled Diffusion Language Models (IDLM), for an MDLM teacher.

Three networks start from the teacher: the frozen teacher f*, a trainable fake model f_hat,
and the student G_theta. The student is a denoiser with the teacher's interface whose output
is a point on the simplex per position (carry-over at unmasked inputs), so it samples with
the ordinary multistep sampler. Training alternates (IDLM Algorithm 1):

1. fake step (eq. 10): f_hat learns, with the MDLM loss, to denoise the student's outputs;
2. student step (eq. 11): the student lowers  L(f*, x) - L(f_hat, x)  on its own outputs x.

By Theorem 3.1 the student's objective is zero exactly when its outputs follow the data
distribution that the teacher is optimal for. The loop and optimizers live in train.py.
"""
import torch

from diffusion import SAMPLING_EPS, alpha, denoise, forward_mask, forward_sample_soft, loss_weight


def student_simplex(student, x_t, t, mask_id, time_conditioned=False):
    """G_theta(x_t, t): a distribution over the V real tokens per position (float32)."""
    return denoise(student, x_t, t, mask_id, time_conditioned)[..., :mask_id].exp()


def noised_student_output(student, x, t, u, mask_id, time_conditioned=False):
    """Algorithm 1's SamplingFunc, then the student: x_t~ from data at time t~, then
    G_theta(x_t~, t~); then a fresh t and z_t ~ q(. | stopgrad(x0_soft)) for the losses.

    No gradient flows through the discrete draw: for MDLM only masked positions carry loss,
    and which positions are masked does not depend on x0.
    """
    x_noisy = forward_mask(x, alpha(t), u, mask_id)
    x0_soft = student_simplex(student, x_noisy, t, mask_id, time_conditioned)
    t_loss = SAMPLING_EPS + (1 - SAMPLING_EPS) * torch.rand(x.shape[0], device=x.device)
    z_t = forward_sample_soft(x0_soft.detach(), alpha(t_loss), mask_id)
    return x0_soft, z_t, t_loss


def soft_mdlm_loss(log_f, x0_soft, z_t, t, mask_id):
    """The MDLM loss with a soft target: w(t) sum over masked positions of -<log f, x0_soft>,
    per token (eqs. 10-11). log_f: [N, L, V] over real tokens."""
    masked = (z_t == mask_id).unsqueeze(-1)
    cross = -(torch.where(masked, log_f, torch.zeros_like(log_f)) * x0_soft).sum(-1)
    return (loss_weight(t)[:, None] * cross).sum() / z_t.numel()


def fake_loss(fake, student, x, t, u, mask_id, time_conditioned=False):
    """Fake step (IDLM eq. 10): the MDLM loss of f_hat on the student's detached outputs."""
    with torch.no_grad():
        x0_soft, z_t, t_loss = noised_student_output(student, x, t, u, mask_id, time_conditioned)
    log_fake = denoise(fake, z_t, t_loss, mask_id, time_conditioned)[..., :mask_id]
    return soft_mdlm_loss(log_fake, x0_soft, z_t, t_loss, mask_id)


def student_objective(x0_soft, log_teacher, log_fake, z_t, t, mask_id):
    """IDLM eq. 11: L(f*, x0_soft) - L(f_hat, x0_soft) on the same z_t. Both log-prob tensors
    are constants here, so the gradient w.r.t. x0_soft is w(t) (log f_hat - log f*) at masked
    positions (divided by the token count) and zero elsewhere."""
    gap = torch.where((z_t == mask_id).unsqueeze(-1), log_teacher - log_fake, torch.zeros_like(log_fake))
    return -(loss_weight(t)[:, None] * (gap * x0_soft).sum(-1)).sum() / z_t.numel()


def student_loss(student, teacher, fake, x, t, u, mask_id, time_conditioned=False):
    """Student step (IDLM eq. 11). Returns (loss, logs); logs has the teacher's and the fake's
    losses on the student's outputs, whose difference (the loss) is the teacher-fake gap."""
    x0_soft, z_t, t_loss = noised_student_output(student, x, t, u, mask_id, time_conditioned)
    with torch.no_grad():
        log_teacher = denoise(teacher, z_t, t_loss, mask_id, time_conditioned)[..., :mask_id]
        log_fake = denoise(fake, z_t, t_loss, mask_id, time_conditioned)[..., :mask_id]
        logs = {"teacher_loss": soft_mdlm_loss(log_teacher, x0_soft, z_t, t_loss, mask_id).item(),
                "fake_loss_on_student": soft_mdlm_loss(log_fake, x0_soft, z_t, t_loss, mask_id).item()}
    return student_objective(x0_soft, log_teacher, log_fake, z_t, t_loss, mask_id), logs
