"""Invariants of the absorbing process (SPEC.md §1), checked exactly on tiny worlds where
possible and statistically (fixed seeds, tolerances derived from the math) where not."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffusion
from helpers import (L, V, AdversarialDenoiser, OptimalDenoiserNet, all_sequences, examples, mask_patterns,
                     optimal_denoiser, random_dit, seeds, tiny_world)

SCHEDULES = [diffusion.LogLinear, diffusion.Cosine]


def pattern_nll(denoiser, x, masked, V):
    """sum over masked i of -log x(z)[i][x_i], z = x with `masked` replaced by MASK."""
    z = np.where(masked, V, x)
    return -np.log(denoiser(z)[masked, x[masked]]).sum()


def schedule_pattern_weight(k, L, schedule):
    """integral_0^1 w(t) (1-alpha_t)^k alpha_t^(L-k) dt from the code's schedule. For the
    log-linear schedule the integrand is a polynomial of degree L-1 (k >= 1), so Gauss-Legendre
    is exact; for the cosine schedule it is analytic on [0, 1] and 64 nodes converge to 1e-13."""
    nodes, weights = np.polynomial.legendre.leggauss(64)
    t = torch.tensor((nodes + 1) / 2, dtype=torch.float64)
    a = schedule.alpha(t)
    integrand = schedule.loss_weight(t) * (1 - a) ** k * a ** (L - k)
    return float((torch.tensor(weights / 2) * integrand).sum())


def exact_nelbo(denoiser, x, V, weight):
    return sum(weight(int(m.sum())) * pattern_nll(denoiser, x, m, V) for m in mask_patterns(len(x)))


worlds = st.tuples(st.integers(2, 3), st.integers(2, 3), seeds)


@pytest.mark.parametrize("schedule", SCHEDULES)
@examples(10)
@given(L=st.integers(1, 6))
def test_schedule_weight_of_a_pattern_with_k_masked_is_beta_k_l_minus_k_plus_1(schedule, L):
    """Whatever the schedule: w(t) dt = -d alpha / (1 - alpha) turns the t-integral into
    integral_0^1 (1-a)^(k-1) a^(L-k) da (at eps = 0), so the NELBO does not depend on it."""
    for k in range(1, L + 1):
        beta = math.factorial(k - 1) * math.factorial(L - k) / math.factorial(L)
        assert schedule_pattern_weight(k, L, schedule(eps=0.0)) == pytest.approx(beta, rel=1e-10)


@pytest.mark.parametrize("schedule", SCHEDULES)
@examples(12)
@given(world=worlds)
def test_nelbo_of_optimal_denoiser_equals_exact_nll(schedule, world):
    V, L, seed = world
    xs, p = tiny_world(V, L, seed)
    denoiser = lambda z: optimal_denoiser(xs, p, z, V)
    weight = lambda k: schedule_pattern_weight(k, L, schedule(eps=0.0))
    for x, px in zip(xs, p):
        assert exact_nelbo(denoiser, x, V, weight) == pytest.approx(-math.log(px), rel=0, abs=1e-9)


@pytest.mark.parametrize("schedule", SCHEDULES)
@examples(12)
@given(world=worlds, mix=st.floats(0.05, 1.0), random_denoiser=st.booleans())
def test_nelbo_of_any_other_denoiser_exceeds_entropy_in_expectation(schedule, world, mix, random_denoiser):
    V, L, seed = world
    xs, p = tiny_world(V, L, seed)
    rng = np.random.default_rng(seed + 1)
    if random_denoiser:
        table = {tuple(z): rng.dirichlet(np.ones(V), size=L) for z in all_sequences(V + 1, L)}
        other = lambda z: np.where((z == V)[:, None], table[tuple(z)], np.eye(V)[np.minimum(z, V - 1)])
    else:  # mix with uniform at masked positions only: revealed ones are carried over anyway
        other = lambda z: np.where((z == V)[:, None], (1 - mix) * optimal_denoiser(xs, p, z, V) + mix / V,
                                   optimal_denoiser(xs, p, z, V))
    weight = lambda k: schedule_pattern_weight(k, L, schedule(eps=0.0))
    entropy = -(p * np.log(p)).sum()
    expected_nelbo = sum(px * exact_nelbo(other, x, V, weight) for x, px in zip(xs, p))
    assert expected_nelbo > entropy + 1e-9


# ----------------------------------------------------------------------------- schedule

@examples(25)
@given(u0=st.floats(0.0, 1.0, exclude_max=True), n=st.integers(1, 64),
       sampling_eps=st.sampled_from([1e-3, 1e-2, 0.0]))
def test_antithetic_times_lie_in_range_and_are_stratified(u0, n, sampling_eps):
    t = diffusion.antithetic_times(u0, n, sampling_eps).double()
    assert t.shape == (n,)
    assert (t >= sampling_eps - 1e-7).all() and (t <= 1).all()
    # before scaling, sorted times are u0 mod 1/n + i/n: exactly one in each bin [i/n, (i+1)/n)
    unscaled = ((t - sampling_eps) / (1 - sampling_eps)).sort().values
    offset = unscaled - torch.arange(n, dtype=torch.float64) / n
    assert (offset > -1e-6).all() and (offset < 1 / n + 1e-6).all()
    assert offset.max() - offset.min() < 1e-6


@pytest.mark.parametrize("schedule", SCHEDULES)
@examples(25)
@given(t=st.floats(1e-4, 1.0), eps=st.sampled_from([0.0, 1e-3, 0.1]))
def test_alpha_is_exp_of_minus_sigma(schedule, t, eps):
    t = torch.tensor(t, dtype=torch.float64)
    s = schedule(eps)
    assert torch.allclose(s.alpha(t), torch.exp(-s.sigma(t)), rtol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
@examples(25)
@given(t=st.floats(1e-4, 1.0), eps=st.sampled_from([0.0, 1e-3, 0.1]))
def test_loss_weight_is_minus_alpha_derivative_over_move_chance(schedule, t, eps):
    s = schedule(eps)
    t = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    a = s.alpha(t)
    (d_alpha,) = torch.autograd.grad(a, t)
    assert torch.allclose(s.alpha_prime(t.detach()), d_alpha, rtol=1e-12)
    assert torch.allclose(s.loss_weight(t.detach()), -d_alpha / (1 - a.detach()), rtol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1])
def test_alpha_falls_from_one_at_t0_to_eps_at_t1(schedule, eps):
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    a = schedule(eps).alpha(t)
    assert a[0] == 1 and a[-1] == pytest.approx(eps, abs=1e-15)
    assert (a[1:] < a[:-1]).all()


def test_log_linear_weight_is_one_over_t():
    t = torch.tensor([1e-3, 0.25, 1.0], dtype=torch.float64)
    assert torch.allclose(diffusion.LogLinear(eps=0.0).loss_weight(t), 1 / t, rtol=1e-12)


# ----------------------------------------------------------------------------- forward process

@examples(20)
@given(seed=seeds, alpha_t=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
def test_forward_mask_masks_exactly_where_uniform_below_move_chance_and_keeps_the_rest(seed, alpha_t):
    g = torch.Generator().manual_seed(seed)
    V, N, L = 5, len(alpha_t), 16
    x = torch.randint(0, V, (N, L), generator=g)
    u = torch.rand(N, L, generator=g)
    a = torch.tensor(alpha_t)
    z = diffusion.forward_mask(x, a, u, V)
    assert torch.equal(z == V, u < (1 - a)[:, None])
    assert torch.equal(z[z != V], x[z != V])


@examples(15)
@given(alpha_t=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3))
def test_forward_mask_masks_with_probability_one_minus_alpha(alpha_t):
    g = torch.Generator().manual_seed(0)
    N, L, V = len(alpha_t), 20_000, 7
    x = torch.randint(0, V, (N, L), generator=g)
    z = diffusion.forward_mask(x, torch.tensor(alpha_t), torch.rand(N, L, generator=g), V)
    for row, a in zip(z, alpha_t):
        move = 1 - a
        # masked count ~ Binomial(L, 1 - alpha_t): 6 standard deviations
        assert abs((row == V).sum().item() - L * move) <= 6 * math.sqrt(L * move * (1 - move)) + 1e-6


@examples(15)
@given(seed=seeds, alpha_t=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3), V=st.integers(2, 6))
def test_forward_sample_soft_masks_with_one_minus_alpha_and_draws_the_rest_from_x(seed, alpha_t, V):
    rng = np.random.default_rng(seed)
    N, L = len(alpha_t), 20_000
    rows = rng.dirichlet(np.full(V, 0.5), size=N)
    rows[:, 0] = 0  # a token of zero probability is never drawn
    rows /= rows.sum(1, keepdims=True)
    x_probs = torch.tensor(rows)[:, None].expand(N, L, V)
    g = torch.Generator().manual_seed(seed)
    z = diffusion.forward_sample_soft(x_probs, torch.tensor(alpha_t), V, generator=g)
    for row, a, probs in zip(z, alpha_t, rows):
        move = 1 - a
        # masked count ~ Binomial(L, 1 - alpha_t): 6 standard deviations
        assert abs((row == V).sum().item() - L * move) <= 6 * math.sqrt(L * move * (1 - move)) + 1e-6
        revealed = row[row != V]
        counts = torch.bincount(revealed, minlength=V + 1)[:V].numpy()
        n = len(revealed)
        # given n revealed, the count of token v ~ Binomial(n, x[v]): 6 standard deviations
        assert (np.abs(counts - n * probs) <= 6 * np.sqrt(n * probs * (1 - probs)) + 1e-6).all()


# ----------------------------------------------------------------------------- SUBS

adversarial_scales = st.sampled_from([1.0, 50.0, 1e4, 1e30])


@examples(25)
@given(seed=seeds, V=st.integers(1, 6), scale=adversarial_scales,
       mask_logit=st.sampled_from([0.0, 1e4, 1e30, -1e30]))
def test_subs_log_probs_has_no_mass_on_mask_carries_over_unmasked_and_is_normalized(seed, V, scale, mask_logit):
    g = torch.Generator().manual_seed(seed)
    N, L = 3, 5
    logits = scale * torch.randn(N, L, V + 1, generator=g)
    logits[..., V] = mask_logit
    z = torch.randint(0, V + 1, (N, L), generator=g)
    before = logits.clone()
    log_x = diffusion.subs_log_probs(logits, z, V)
    assert torch.equal(logits, before), "the caller's logits must not be modified"
    assert (log_x[..., V] == -math.inf).all()
    probs = log_x.exp()
    assert torch.allclose(probs.sum(-1), torch.ones(N, L), atol=1e-5)
    revealed = z != V
    assert torch.equal(probs[revealed], torch.nn.functional.one_hot(z[revealed], V + 1).float())


# ----------------------------------------------------------------------------- reverse posterior

def bayes_posterior(x, alpha_s, alpha_t):
    """q(z_s | z_t, x) by Bayes' rule from the forward marginal q(z_s | x) and the one-step kernel
    q(z_t | z_s) (alpha_{t|s} = alpha_t / alpha_s): [z_t, z_s] rows, None where q(z_t | x) = 0."""
    V = len(x)
    K = V + 1
    q_s = np.append(alpha_s * x, 1 - alpha_s)
    kernel = np.zeros((K, K))
    for v in range(V):
        kernel[v, v], kernel[v, V] = alpha_t / alpha_s, 1 - alpha_t / alpha_s
    kernel[V, V] = 1.0
    joint = q_s[:, None] * kernel                         # [z_s, z_t]
    q_t = joint.sum(0)
    assert np.allclose(q_t, np.append(alpha_t * x, 1 - alpha_t))  # the chain gives q(z_t | x)
    return [joint[:, zt] / q_t[zt] if q_t[zt] > 0 else None for zt in range(K)]


def assert_posterior_is_bayes(posterior, x, alpha_s, alpha_t):
    for zt, expected in enumerate(bayes_posterior(x, alpha_s, alpha_t)):
        if expected is not None:
            assert np.allclose(posterior[zt], expected, rtol=1e-9, atol=1e-12)


@examples(40)
@given(V=st.integers(1, 3), alpha_t=st.floats(0.0, 0.999), gap=st.floats(1e-3, 1.0),
       hard=st.booleans(), seed=seeds)
def test_reverse_posterior_equals_bayes_rule_on_forward_marginals(V, alpha_t, gap, hard, seed):
    alpha_s = alpha_t + gap * (1 - alpha_t)
    rng = np.random.default_rng(seed)
    x = np.eye(V)[rng.integers(V)] if hard else rng.dirichlet(np.ones(V))
    z_t = torch.arange(V + 1)[None]                      # every z_t at once, one per position
    x_probs = torch.tensor(x)[None, None].expand(1, V + 1, V)
    assert_posterior_is_bayes(diffusion.reverse_posterior(z_t, x_probs, alpha_s, alpha_t, V)[0].numpy(),
                              x, alpha_s, alpha_t)


@pytest.mark.parametrize("schedule", SCHEDULES)
@examples(20)
@given(V=st.integers(1, 3), t=st.floats(1e-3, 1.0), gap=st.floats(1e-3, 1.0), hard=st.booleans(), seed=seeds)
def test_process_posterior_at_times_s_t_is_bayes_rule_under_its_schedule(schedule, V, t, gap, hard, seed):
    process = diffusion.MaskingProcess(V, schedule(eps=1e-3))
    s = t * (1 - gap)
    rng = np.random.default_rng(seed)
    x = np.eye(V)[rng.integers(V)] if hard else rng.dirichlet(np.ones(V))
    z_t = torch.arange(V + 1)[None]
    x_probs = torch.tensor(x)[None, None].expand(1, V + 1, V)
    alpha = lambda time: float(process.alpha(torch.tensor(time, dtype=torch.float64)))
    assert_posterior_is_bayes(process.posterior(z_t, x_probs, s, t)[0].numpy(), x, alpha(s), alpha(t))


# ----------------------------------------------------------------------------- reverse step

@examples(25)
@given(seed=seeds, V=st.integers(1, 4), scale=adversarial_scales, mask_logit=st.sampled_from([0.0, 1e30]),
       raw=st.booleans())
def test_reverse_step_never_remasks_or_adds_masks_for_any_log_x(seed, V, scale, mask_logit, raw):
    """Even for log_x that is not SUBS-shaped (raw log-softmax over V+1, mass on MASK)."""
    g = torch.Generator().manual_seed(seed)
    N, L, steps = 2, 6, 6
    net, process = AdversarialDenoiser(V, seed, scale, mask_logit), diffusion.MaskingProcess(V)
    z = torch.full((N, L), V)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for i in range(steps):
        logits = net(z, None)
        log_x = logits.log_softmax(-1) if raw else diffusion.subs_log_probs(logits, z, V)
        z_new = process.reverse_step(log_x, z, times[i + 1], times[i], generator=g)
        revealed = z != V
        assert torch.equal(z_new[revealed], z[revealed])
        assert ((z_new >= 0) & (z_new <= V)).all()
        z = z_new


# ----------------------------------------------------------------------------- categorical draws

def test_float64_categorical_draws_follow_a_distribution_with_a_tail_of_1e8_tokens():
    tail_tokens, p_tail_token = 10**6, 1e-8
    probs = torch.full((tail_tokens + 1,), p_tail_token, dtype=torch.float64)
    probs[0] = 1 - tail_tokens * p_tail_token            # main token 0.99, tail mass 0.01
    N, tail_mass = 10**6, tail_tokens * p_tail_token
    draws = diffusion.sample_categorical(probs, torch.Generator().manual_seed(0), num_samples=N)
    tail = draws[draws > 0]
    n = len(tail)
    # tail count ~ Binomial(N, 0.01): sd = sqrt(N 0.01 0.99) ~ 99.5; allow 6 sd
    sd = math.sqrt(N * tail_mass * (1 - tail_mass))
    assert abs(n - N * tail_mass) <= 6 * sd
    # the tail itself is uniform over 1e6 tokens, each below float32's 2^-24 resolution: repeats among n
    # draws ~ Poisson(n^2 / 2e6) ~ 50 (sd ~ 7); a 2^-24 uniform grid reaches only ~1/6 of them (~300)
    repeats = n - tail.unique().numel()
    expected_repeats = n * n / (2 * tail_tokens)
    assert abs(repeats - expected_repeats) <= 6 * math.sqrt(expected_repeats) + 1
    # why float64: the same inverse-CDF draw with a float32 running sum (as a GPU scan accumulates)
    # never leaves the main token, since 0.99 + 1e-8 rounds back to 0.99 in float32
    cdf32 = torch.from_numpy(np.cumsum(probs.float().numpy(), dtype=np.float32))
    u32 = torch.rand(N, generator=torch.Generator().manual_seed(0))
    n32 = (torch.searchsorted(cdf32, u32 * cdf32[-1], right=True) > 0).sum().item()
    assert n32 < N * tail_mass - 6 * sd


@examples(10)
@given(seed=seeds)
def test_categorical_draws_match_a_random_five_token_distribution(seed):
    probs = torch.tensor(np.random.default_rng(seed).dirichlet(np.ones(5)))
    N = 20_000
    draws = diffusion.sample_categorical(probs, torch.Generator().manual_seed(seed), num_samples=N)
    expected = N * probs
    chi2 = (((torch.bincount(draws, minlength=5) - expected) ** 2) / expected).sum().item()
    # chi-square with 4 degrees of freedom: P(chi2 > 30) = e^-15 (1 + 15) ~ 5e-6
    assert chi2 < 30


@examples(25)
@given(seed=seeds, K=st.integers(1, 8), rows=st.integers(1, 4))
def test_categorical_draws_never_pick_a_zero_probability_token(seed, K, rows):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(rows, K, generator=g, dtype=torch.float64)
    probs[torch.rand(rows, K, generator=g) < 0.5] = 0.0
    probs[torch.arange(rows), torch.randint(0, K, (rows,), generator=g)] = 1.0  # one positive per row
    draws = diffusion.sample_categorical(probs, g, num_samples=500)
    assert draws.shape == (rows, 500)
    assert (probs.gather(1, draws) > 0).all()
    single = diffusion.sample_categorical(probs, g)
    assert single.shape == (rows,) and (probs.gather(1, single[:, None]) > 0).all()


# ----------------------------------------------------------------------------- training objective

@examples(6)
@given(world=worlds)
def test_nelbo_loss_estimator_is_unbiased_for_its_exact_expectation(world):
    V, L, seed = world
    xs, p = tiny_world(V, L, seed)
    eps = a = 1e-3  # schedule eps and sampling_eps
    # E[estimator] = mean over the batch of (1/(1-a)) int_a^1 (1/t) sum_M m^k (1-m)^(L-k) c(x, M) dt / L,
    # m = 1 - alpha_t = (1-eps) t, w(t) = 1/t: a polynomial in t, so Gauss-Legendre is exact
    nodes, gl_weights = np.polynomial.legendre.leggauss(16)
    t = (1 - a) / 2 * nodes + (1 + a) / 2
    m = (1 - eps) * t
    pattern_weight = {k: ((1 - a) / 2 * gl_weights / t * m ** k * (1 - m) ** (L - k)).sum() / (1 - a)
                      for k in range(1, L + 1)}
    denoiser = lambda z: optimal_denoiser(xs, p, z, V)
    exact = {tuple(x): exact_nelbo(denoiser, x, V, pattern_weight.__getitem__) for x in xs}
    batch = np.concatenate([xs, xs])
    expectation = np.mean([exact[tuple(x)] for x in batch]) / L
    net, x = OptimalDenoiserNet(xs, p, V), torch.tensor(batch)
    g = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(1000):
        times = diffusion.antithetic_times(torch.rand((), generator=g, dtype=torch.float64), len(x), a)
        draws.append(diffusion.MaskingProcess(V).loss(net, x, times, torch.rand(x.shape, generator=g)).item())
    draws = np.array(draws)
    standard_error = draws.std(ddof=1) / math.sqrt(len(draws))
    assert abs(draws.mean() - expectation) <= 5 * standard_error


# ----------------------------------------------------------------------------- the NELBO of validation and likelihoods

def nelbo_inputs(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, L), generator=g)
    return x, diffusion.antithetic_times(torch.rand((), generator=g).item(), n), torch.rand(x.shape, generator=g)


@examples(6)
@given(seed=st.integers(0, 2**31 - 1), time_conditioned=st.booleans())
def test_nelbo_with_the_output_layer_at_masked_rows_only_equals_the_full_loss(seed, time_conditioned):
    model = random_dit(seed, V, L)
    process = diffusion.MaskingProcess(V, diffusion.Cosine(1e-3) if time_conditioned else diffusion.LogLinear(), time_conditioned)
    x, t, u = nelbo_inputs(seed)
    with torch.no_grad():
        full, masked = process.loss(model, x, t, u), process.nelbo(model, x, t, u) / x.numel()
    assert torch.allclose(masked, full, rtol=1e-5, atol=1e-6)


def test_fp16_autocast_losses_stay_finite_even_with_huge_logits():
    """Logits of order 3e4 (fp16 holds up to 65504): SUBS's masking, in float32, yields no NaN."""
    model, process = random_dit(0, V, L), diffusion.MaskingProcess(V, diffusion.LogLinear())
    x, t, u = nelbo_inputs(0)
    with torch.no_grad():
        largest = model(process.forward_sample(x, t, u), torch.zeros(len(x))).abs().max()
        model.output_layer.linear.weight.mul_(3e4 / largest)
        model.output_layer.linear.bias.mul_(3e4 / largest)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        assert model(process.prior(1, L, "cpu"), torch.zeros(1)).dtype == torch.float16
        losses = process.loss(model, x, t, u), process.nelbo(model, x, t, u)
    assert all(torch.isfinite(loss) for loss in losses)
