"""Duo's Gaussian duality (SPEC-teachers A1.1): T(at~) by quadrature against Monte-Carlo argmax
frequencies, the published table values, and the curriculum (soft-input) loss."""
import math

import pytest
import torch

import duo
import helpers
from uniform import UniformProcess


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
    """A1.1 (V = 50258): gamma -4 -> .9987, -3 -> .596, -2 -> .072, -1 -> .0062."""
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
    """The DiT embeds float logits [N, L, V] as softmax(logits) @ E (pitfall A5.5: pass w / tau,
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
    assert curriculum.config() == process.config()  # the checkpoint records the process itself


def test_curriculum_refuses_the_absorbing_process():
    from diffusion import MaskingProcess
    with pytest.raises(ValueError, match="uniform"):
        duo.Curriculum(MaskingProcess(6), tau=0.1)
