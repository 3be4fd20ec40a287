"""Duo's Gaussian duality (SPEC.md §4.4): T(at~) by quadrature against Monte-Carlo argmax
frequencies, the published table values, the curriculum (soft-input) loss, and IDLM-code's Gaussian
IDLM-Duo (SPEC.md §6.4): its loss latent's law, why it is inexact for a soft student, and its gradient."""
import math

import pytest
import torch
import torch.nn.functional as F

import helpers
import idlm
from processes import duo
from processes.uniform import UniformProcess


@pytest.mark.parametrize("alpha_tilde", [0.3, 0.6, 0.9])
def test_argmax_of_the_gaussian_latent_has_the_uniform_marginal_of_T(alpha_tilde):
    """argmax(at~ e_x + st~ eps) ~ alpha e_x + (1 - alpha)/V with alpha = T(at~): V = 4, 1e6 draws
    (fixed seed), each frequency within 4 standard deviations sqrt(p (1-p) / n)."""
    vocab, n = 4, 1_000_000
    sigma_tilde = math.sqrt(1 - alpha_tilde ** 2)
    alpha = float(duo.alpha_of_scales(alpha_tilde, sigma_tilde, vocab)[0])
    noise = torch.randn(n, vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = sigma_tilde * noise
    w[:, 1] += alpha_tilde
    freq = torch.bincount(w.argmax(-1), minlength=vocab).double() / n
    p = torch.full((vocab,), (1 - alpha) / vocab, dtype=torch.float64)
    p[1] += alpha
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


def test_table_reproduces_duos_published_values_for_gpt2():
    """SPEC.md §4.4 (V = 50258): gamma -4 -> .9987, -3 -> .596, -2 -> .072, -1 -> .0062."""
    gammas = torch.tensor([-4.0, -3.0, -2.0, -1.0], dtype=torch.float64)
    alphas = duo.alpha_of_scales(*(s.numpy() for s in duo.gaussian_scales(gammas)), 50258)
    for got, expected in zip(alphas, [0.9987, 0.596, 0.072, 0.0062]):
        assert abs(got - expected) / expected < 0.01


def test_schedule_interpolates_the_table_and_its_slope():
    schedule = duo.GaussianSchedule(50)
    alpha, slope = schedule.alpha_and_slope(torch.tensor([0.0, 0.37, 1.0]))
    gammas = schedule.gamma(torch.tensor([0.0, 0.37, 1.0]))
    exact = duo.alpha_of_scales(*(s.numpy() for s in duo.gaussian_scales(gammas)), 50)
    torch.testing.assert_close(alpha, torch.from_numpy(exact), rtol=1e-5, atol=1e-7)
    h = 1e-4  # the exact derivative, by a central difference of the quadrature; the table's chord is within 1%
    exact_at = lambda t: duo.alpha_of_scales(*(s.numpy() for s in duo.gaussian_scales(schedule.gamma(t))), 50)  # noqa
    derivative = (exact_at(torch.tensor([0.37 + h])) - exact_at(torch.tensor([0.37 - h])))[0] / (2 * h)
    assert abs(slope[1].item() - derivative) < 1e-2 * abs(derivative)
    assert (slope < 0).all()  # alpha falls as t grows


def test_soft_input_of_a_near_one_hot_logit_is_the_token_embedding():
    """The DiT embeds float logits [N, L, V] as softmax(logits) @ E (SPEC.md §4.4: pass w / tau,
    not probabilities); sharp logits reproduce the token ids' embeddings."""
    model = helpers.random_dit(0, 6, 5)
    tokens = torch.randint(6, (2, 5))
    sharp = torch.nn.functional.one_hot(tokens, 6).float() / 1e-4
    torch.testing.assert_close(model.vocab_embed(sharp), model.vocab_embed(tokens))


def test_curriculum_loss_is_finite_and_trains_only_through_the_network():
    torch.manual_seed(0)
    process = UniformProcess(6)
    model = helpers.random_dit(1, 6, 5)
    curriculum = duo.Curriculum(process, tau=0.1)
    x = torch.randint(6, (3, 5))
    loss = curriculum.loss(model, x, torch.tensor([0.1, 0.5, 0.9]), None)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert model.vocab_embed.embedding.grad is not None
    assert curriculum.process is process and curriculum.vocab_size == process.vocab_size  # a view of the process


def test_curriculum_refuses_the_absorbing_process():
    import config
    from diffusion import MaskingProcess
    with pytest.raises(ValueError, match="uniform"):
        config.check_method(None, MaskingProcess(6), tau=0.1)


# ----------------------------------------------------------------------------- IDLM-code's Gaussian IDLM-Duo (SPEC.md §6.4)

def argmax_law(x_probs, alpha_tilde, sigma_tilde, points=20001, width=12.0):
    """The exact law of argmax(at~ x + st~ eps), eps ~ N(0, I_V), for a soft x [V], float64, by the
    trapezoid rule: P(k) = int phi_k(u) prod_{j != k} Phi_j(u) du, coordinate j ~ N(at~ x_j, st~^2)."""
    x = torch.as_tensor(x_probs, dtype=torch.float64)
    u = torch.linspace(-width * sigma_tilde, alpha_tilde + width * sigma_tilde, points, dtype=torch.float64)
    z = (u[None] - alpha_tilde * x[:, None]) / sigma_tilde                     # [V, points]
    log_cdf = torch.special.log_ndtr(z)
    density = torch.exp(-0.5 * z ** 2) / (sigma_tilde * math.sqrt(2 * math.pi))
    others = torch.exp(log_cdf.sum(0, keepdim=True) - log_cdf)               # prod over j != k
    return torch.trapezoid(density * others, u, dim=-1)


def constant_gamma_curriculum(vocab, alpha_tilde, tau=0.1):
    """A Curriculum whose Gaussian latent has scale at~ at t = 0 (a schedule window starting there)."""
    gamma = math.log((1 - alpha_tilde ** 2) / alpha_tilde ** 2)  # at~^2 = sigmoid(-gamma)
    return duo.Curriculum(UniformProcess(vocab), tau, duo.GaussianSchedule(vocab, gamma, gamma + 1.0))


def argmax_frequencies(curriculum, x_probs, n, seed=0):
    """Frequencies of argmax(w_0) over n draws of the Curriculum's loss latent for one soft x [V]."""
    torch.manual_seed(seed)
    x = torch.as_tensor(x_probs, dtype=torch.float64).expand(1000, n // 1000, -1).contiguous()
    w = curriculum.forward_sample_soft(x, torch.zeros(1000, dtype=torch.float64))
    return torch.bincount(w.argmax(-1).flatten(), minlength=len(x_probs)).double() / n


def test_gaussian_loss_latent_of_a_one_hot_student_has_the_uniform_law_of_T():
    """The loss latent at a one-hot G: argmax(w_t) ~ T e_x + (1 - T)/V with alpha_t = T(gamma_t) from the
    schedule's table (V = 4, 1e6 draws, each frequency within 4 standard deviations)."""
    vocab, n = 4, 1_000_000
    curriculum = duo.Curriculum(UniformProcess(vocab), tau=0.1)
    torch.manual_seed(1)
    t = torch.full((1000,), 0.4)
    w = curriculum.forward_sample_soft(F.one_hot(torch.full((1000, n // 1000), 2), vocab).float(), t)
    freq = torch.bincount(w.argmax(-1).flatten(), minlength=vocab).double() / n
    alpha, _ = curriculum.schedule.alpha_and_slope(torch.tensor(0.4))
    p = (1 - alpha) / vocab + alpha * F.one_hot(torch.tensor(2), vocab).double()
    assert ((freq - p).abs() <= 4 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


def test_gaussian_argmax_of_a_soft_student_is_not_the_linear_marginal():
    """SPEC.md §6.4: why the default IDLM-Duo is the exact relaxation z_t ~ Cat(T G + (1-T)/V)
    and the Gaussian argmax is the flagged, opt-in variant. Theorem 3.1's relaxation (c) needs z_t's law
    to be linear in G; argmax(at~ G + st~ eps) is not, except at one-hot G. V = 4, at~ = 0.9,
    G = (.5, .5, 0, 0): the exact argmax law (quadrature, checked at a one-hot G against T and here
    against 1e6 draws of the Curriculum's own latent within 4 standard deviations) is
    (.4062, .4062, .0938, .0938), the linear marginal (.445, .445, .055, .055) (SPEC.md §4.4). The gap, 0.039,
    is 80 to 130 standard deviations of the Monte-Carlo frequencies (sqrt(p (1 - p) / 1e6) <= 5e-4)."""
    vocab, alpha_tilde, n = 4, 0.9, 1_000_000
    sigma_tilde = math.sqrt(1 - alpha_tilde ** 2)
    T = float(duo.alpha_of_scales(alpha_tilde, sigma_tilde, vocab)[0])
    one_hot = F.one_hot(torch.tensor(0), vocab).double()
    torch.testing.assert_close(argmax_law(one_hot, alpha_tilde, sigma_tilde), T * one_hot + (1 - T) / vocab,
                               rtol=0, atol=1e-9)
    soft = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    exact, linear = argmax_law(soft, alpha_tilde, sigma_tilde), T * soft + (1 - T) / vocab
    freq = argmax_frequencies(constant_gamma_curriculum(vocab, alpha_tilde), soft, n)
    sd = (exact * (1 - exact) / n).sqrt()
    assert ((freq - exact).abs() <= 4 * sd).all(), (freq, exact)
    assert ((freq - linear).abs() >= 50 * sd).all(), (freq, linear)
    torch.testing.assert_close(exact, torch.tensor([0.4062, 0.4062, 0.0938, 0.0938], dtype=torch.float64),
                               rtol=0, atol=1e-4)


def gap_and_gradients(tau, seed=0, vocab=6, length=5, n=3):
    """The Gaussian student objective at a soft G on one fixed noise draw: (full autograd gradient,
    the closed form of the explicit xbar terms, the gradient through the networks' soft inputs only)."""
    curriculum = duo.Curriculum(UniformProcess(vocab), tau)
    teacher, fake = helpers.random_dit(seed, vocab, length), helpers.random_dit(seed + 1, vocab, length)
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, length, vocab, generator=g).softmax(-1).requires_grad_()
    t = 0.1 + 0.8 * torch.rand(n, generator=g)
    torch.manual_seed(seed)
    w = curriculum.forward_sample_soft(G, t)
    log_teacher, log_fake = (curriculum.loss_log_outputs(idlm.weights_fixed(m), w, t) for m in (teacher, fake))
    (full,) = torch.autograd.grad(curriculum.loss_gap(log_teacher, log_fake, G, w, t), G, retain_graph=True)
    (soft_input,) = torch.autograd.grad(curriculum.loss_gap(log_teacher, log_fake, G.detach(), w, t), G)
    assert all(p.grad is None for m in (teacher, fake) for p in m.parameters())
    alpha, slope = (v[:, None, None] for v in curriculum.schedule.alpha_and_slope(t))
    z = w.argmax(-1)[..., None]
    xbar = vocab * alpha * G.detach().double() + 1 - alpha
    log_xbar = lambda lf: (vocab * alpha * lf.detach().double().exp() + 1 - alpha).log()  # noqa: E731
    D = log_xbar(log_fake) - log_xbar(log_teacher)
    D = D - D.gather(-1, z)
    s_D = (xbar / xbar.gather(-1, z) * D).sum(-1, keepdim=True)
    rate = -slope / (vocab * alpha)
    explicit = rate * vocab * alpha * (D - F.one_hot(z[..., 0], vocab) * s_D) / xbar.gather(-1, z) / (n * length)
    return full.double(), explicit, soft_input.double()


@pytest.mark.parametrize("seed", range(2))
def test_gaussian_student_gradient_is_the_explicit_xbar_terms_plus_the_soft_input_path(seed):
    """SPEC.md §6.4: with G in the latent w_t = at~ G + st~ eps and in xbar, autograd's dJ/dG is the closed form
    of the explicit terms (uniform.udlm_loss_gap's, test_idlm_exact (e)) plus the path through the frozen
    networks' soft inputs w_t / tau, which is not zero at tau = 1."""
    full, explicit, soft_input = gap_and_gradients(tau=1.0, seed=seed)
    torch.testing.assert_close(full, explicit + soft_input, rtol=1e-4, atol=1e-7)
    assert soft_input.abs().max() > 1e-2 * explicit.abs().max()


def test_gaussian_soft_input_path_vanishes_as_tau_goes_to_zero():
    """softmax(w_t / tau) saturates as tau -> 0, so at tau = 1e-4 the gradient is the
    explicit xbar terms alone (the closed form), as for the exact relaxation's student step."""
    full, explicit, soft_input = gap_and_gradients(tau=1e-4)
    assert soft_input.abs().max() < 1e-6 * explicit.abs().max()
    torch.testing.assert_close(full, explicit, rtol=1e-4, atol=1e-7)
