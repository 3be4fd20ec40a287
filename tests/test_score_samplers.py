"""The score samplers (SPEC.md §5.3): with normalised scores the analytic sampler is the
ancestral sampler, draw for draw; every step is a valid distribution (clamped when the scores
say otherwise); K steps + 1 final pass."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffusion
import helpers
from helpers import examples, seeds
from processes.sedd import SeddProcess
from samplers import Ancestral, ScoreSampler, analytic_rate, euler_rate, make_sampler, move_probability, score_step

V, L = 6, 8
MASK = V


class NormalisedScores(torch.nn.Module):
    """A network whose SEDD scores are normalised: raw = log x_hat + log V, so s = r_t x_hat."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, z, sigma):
        raw = self.net(z, sigma).double()
        return torch.cat([raw[..., :V].log_softmax(-1) + math.log(V), raw[..., V:]], -1)


@examples(8)
@given(seed=seeds, steps=st.sampled_from([1, 2, 5, 16]))
def test_analytic_sampler_with_normalised_scores_draws_the_same_tokens_as_ancestral(seed, steps):
    model = NormalisedScores(helpers.random_dit(seed % 100, V, L))
    process = SeddProcess(V)
    z = process.prior(3, L, "cpu")
    ours = ScoreSampler("analytic")(model, process, z, steps, torch.Generator().manual_seed(seed))
    reference = Ancestral(final="sample")(model, process, z, steps, torch.Generator().manual_seed(seed))
    assert torch.equal(ours[0], reference[0]) and ours[1] == reference[1]
    assert (ours[0] != MASK).all()


@examples(15)
@given(seed=seeds, log_scale=st.floats(-8, 8), rate=st.floats(0, 5))
def test_a_score_step_never_remasks_keeps_real_tokens_and_clamps_the_move_chance(seed, log_scale, rate):
    g = torch.Generator().manual_seed(seed)
    z_t = torch.where(torch.rand(4, L, generator=g) < 0.7, MASK, torch.randint(0, V, (4, L), generator=g))
    log_s = log_scale + torch.randn(4, L, V + 1, generator=g)
    p = move_probability(log_s[..., :V], rate)
    assert ((p >= 0) & (p <= 1)).all()
    expected = (rate * log_s[..., :V].double().exp().sum(-1)).clamp(max=1)
    torch.testing.assert_close(p, expected)
    z_s = score_step(log_s, z_t, rate, MASK, g)
    assert (z_s[z_t != MASK] == z_t[z_t != MASK]).all()
    if rate * math.exp(log_scale - 4) * V > 1:  # sum P(y) > 1 for sure: negative stay chance, clamped: all move
        assert (z_s != MASK).all()
    if rate == 0:
        assert torch.equal(z_s, z_t)


def test_euler_rate_is_dt_times_sigma_prime_and_analytic_is_expm1_of_dsigma():
    process = SeddProcess(V)
    s, t = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    assert abs(euler_rate(process, s, t).item() - 0.2 * (1 - 1e-3) / (1 - (1 - 1e-3) * 0.5)) < 1e-14
    alpha = process.alpha
    # r_t expm1(dsigma) = (alpha_s - alpha_t) / (1 - alpha_t): the ancestral reveal chance
    torch.testing.assert_close(analytic_rate(process, s, t) * alpha(t) / (1 - alpha(t)),
                               (alpha(s) - alpha(t)) / (1 - alpha(t)))


@pytest.mark.parametrize("rule", ["analytic", "euler"])
def test_score_samplers_count_k_steps_plus_one_final_pass_and_fill_every_mask(rule):
    model = helpers.random_dit(0, V, L)
    process = SeddProcess(V)
    with torch.no_grad():  # tiny scores: positions stay MASK until the final pass
        model.output_layer.linear.bias.fill_(-30.0)
    tokens, forwards = make_sampler(rule)(model, process, process.prior(2, L, "cpu"), 3, torch.Generator().manual_seed(0))
    assert forwards == 2 * (3 + 1)
    assert (tokens != MASK).all() and (tokens < V).all()


def test_score_samplers_refuse_a_process_without_scores_in_one_clear_error():
    with pytest.raises(ValueError, match="needs a score model"):
        make_sampler("analytic")(helpers.random_dit(0, V, L), diffusion.MaskingProcess(V),
                                 torch.full((1, L), MASK), 2)
