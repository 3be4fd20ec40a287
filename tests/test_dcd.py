"""DCD (dcd.py, processes/duo.py, SPEC.md §4.6): the coupled times, the round gaps, and the loss's fixed point."""
import copy

import pytest
import torch
import torch.nn.functional as F

import config
import helpers
from diffusion import MaskingProcess
from processes import duo as dcd
from processes.uniform import UniformProcess


def test_round_gaps_double_and_the_times_stay_ordered_in_zero_one():
    assert [dcd.round_gap(j, 64) for j in range(3)] == [1 / 64, 2 / 64, 4 / 64]
    t, s = dcd.coupled_times(torch.tensor([0.0, 0.5, 0.99]), 0.1)
    assert torch.allclose(t - s, torch.full((3,), 0.1, dtype=torch.float64))
    assert (s >= 0).all() and (t <= 1).all()


def test_loss_is_zero_for_one_network_at_zero_gap_and_positive_otherwise():
    """With dt = 0 student and teacher see the same argmax(w) at the same sigma: KL = 0. With a
    gap the teacher sees a cleaner latent: KL > 0, and only the student gets a gradient."""
    process = UniformProcess(6)
    student = helpers.random_dit(0, 6, 5)
    teacher = copy.deepcopy(student).requires_grad_(False)
    schedule = dcd.GaussianSchedule(6, *dcd.DCD_GAMMA_RANGE)
    x, t = torch.randint(6, (4, 5)), torch.rand(4)
    torch.manual_seed(0)
    assert abs(dcd.dcd_loss(student, teacher, process, schedule, x, t, 0.0).item()) < 1e-6
    torch.manual_seed(0)
    value = dcd.dcd_loss(student, teacher, process, schedule, x, t, dcd.round_gap(1, 4))
    value.backward()
    assert value.item() > 0
    assert any(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_dcd_refuses_an_absorbing_teacher_in_one_line():
    with pytest.raises(ValueError, match="uniform-state"):
        config.check_method("dcd", MaskingProcess(6))


class SigmaTable(torch.nn.Module):
    """logits[n, i] = table[z[n, i]] + sigma[n] slope: an output that depends on the input tokens and
    on the time input, with a record of the sigmas it was called with."""

    def __init__(self, seed, vocab):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(2 * torch.randn(vocab, vocab, generator=g, dtype=torch.float64))
        self.slope = 10 * torch.randn(vocab, generator=g, dtype=torch.float64)  # sigma is small at V = 5
        self.sigmas = []

    def forward(self, z, sigma):
        self.sigmas.append(sigma.clone())
        return self.table[z] + sigma.double()[:, None, None] * self.slope


def expected_dcd_loss(student, teacher, schedule, x, t, dt, seed):
    """SPEC.md §4.6 written out: s = t - dt after t <- min(t + dt, 1); one eps (the same seed) couples
    w_t and w_s through the data; at~^2 = sigmoid(-gamma); sigma = -log T(at~) by quadrature; the
    two networks' log-probabilities there, float64, and the two sigmas."""
    vocab = student.table.shape[0]
    t = (t.double() + dt).clamp(max=1.0)
    s = t - dt
    torch.manual_seed(seed)
    noise = torch.randn(*x.shape, vocab)
    onehot = F.one_hot(x, vocab).float()

    def latent_and_sigma(time):
        gamma = schedule.g_min + time * (schedule.g_max - schedule.g_min)
        alpha_tilde, sigma_tilde = torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()
        w = alpha_tilde.float()[:, None, None] * onehot + sigma_tilde.float()[:, None, None] * noise
        alpha = torch.from_numpy(dcd.alpha_of_scales(alpha_tilde.numpy(), sigma_tilde.numpy(), vocab))
        return w.argmax(-1), -alpha.log()

    (z_t, sigma_t), (z_s, sigma_s) = latent_and_sigma(t), latent_and_sigma(s)
    with torch.no_grad():
        log_p = (student.table[z_t] + sigma_t[:, None, None] * student.slope).log_softmax(-1)
        log_q = (teacher.table[z_s] + sigma_s[:, None, None] * teacher.slope).log_softmax(-1)
    return log_p, log_q, sigma_t, sigma_s


def test_dcd_loss_is_the_reverse_kl_of_the_student_at_t_from_the_teacher_at_t_minus_dt():
    """Duo-code's DCD ("kl-bwd"): the student reads argmax(w_t) at sigma_t, the teacher argmax(w_s) at
    sigma_s = sigma(t - dt), both from one shared eps; the loss is KL(student || teacher). Networks whose
    output moves with sigma catch a teacher fed the wrong time; distinct tables catch the direction."""
    vocab, dt, seed = 5, 0.25, 3
    schedule = dcd.GaussianSchedule(vocab, *dcd.DCD_GAMMA_RANGE)
    student, teacher = SigmaTable(0, vocab), SigmaTable(1, vocab)
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randint(vocab, (16, 6), generator=g), torch.rand(16, generator=g)
    torch.manual_seed(seed)
    loss = dcd.dcd_loss(student, teacher, UniformProcess(vocab), schedule, x, t, dt)
    log_p, log_q, sigma_t, sigma_s = expected_dcd_loss(student, teacher, schedule, x, t, dt, seed)
    expected = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    forward = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    assert (expected - forward).abs() > 0.1                   # the direction matters on these tables
    assert (sigma_t - sigma_s > 0.5 * sigma_t).all()          # the two times are far apart in noise
    assert torch.allclose(student.sigmas[0].double(), sigma_t, rtol=1e-4)
    assert torch.allclose(teacher.sigmas[0].double(), sigma_s, rtol=1e-4)
    assert torch.allclose(loss.double(), expected, rtol=1e-4)  # float32 log-softmax, table interpolation

