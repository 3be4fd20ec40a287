"""evaluation/exact.py: the exact denoisers of the Markov source, against brute-force enumeration."""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import data
from diffusion import subs_log_probs
from evaluation.exact import ExactDenoiser, ExactUniformDenoiser, loo_posterior, posterior
from helpers import assert_one_error_line, run_script
from processes.uniform import UniformProcess
from small_world import conditional, kernel, loo_denoiser, sequences


@given(st.integers(2, 3), st.integers(1, 5), st.integers(0, 1000), st.data())
@settings(max_examples=30, deadline=None)
def test_posterior_is_the_conditional_of_each_masked_token_given_the_unmasked_ones(vocab, length, seed, draw):
    """Enumerate all V^L sequences: p(x_i = v | unmasked tokens) = sum of p(x) over the
    sequences that agree with z and have v at i, normalised."""
    source = data.MarkovSource(vocab_size=vocab, seq_len=length, branching=2, seed=seed)
    xs = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    p = source.log_prob(xs).exp()
    x = xs[draw.draw(st.sampled_from(range(len(xs))).filter(lambda k: p[k] > 0))]
    masked = torch.tensor(draw.draw(st.lists(st.booleans(), min_size=length, max_size=length)))
    z = torch.where(masked, vocab, x)[None]
    agrees = ((xs == z) | masked).all(-1)
    by_hand = torch.stack([torch.stack([(p * agrees * (xs[:, i] == v)).sum() for v in range(vocab)])
                           for i in range(length)])
    assert torch.allclose(posterior(source.initial, source.transition, z, vocab)[0], by_hand / by_hand.sum(-1, keepdim=True))


def test_exact_denoiser_predicts_log_posteriors_and_never_mask():
    source = data.MarkovSource(vocab_size=6, seq_len=10, seed=3)
    z = torch.tensor([[6, 6, 2, 6, 6, 6, 0, 6, 6, 6], [6] * 10])
    out = ExactDenoiser(source)(z)
    assert out.shape == (2, 10, 7)
    assert torch.allclose(subs_log_probs(out, z, 6)[..., :6].exp(), posterior(source.initial, source.transition, z, 6).float(), atol=1e-6)
    assert (out[..., 6] < -600).all()


def small_chain(vocab, length, seed):
    """A Markov source on [vocab]^length, all its sequences, and their probabilities."""
    source = data.MarkovSource(vocab_size=vocab, seq_len=length, branching=2, seed=seed)
    xs = sequences(vocab, length)
    return source, xs, source.log_prob(xs).exp()


@pytest.mark.parametrize("vocab", [3, 4])
@given(seed=st.integers(0, 1000), alpha=st.floats(0.01, 0.99))
@settings(max_examples=10, deadline=None)
def test_loo_posterior_is_the_leave_one_out_conditional_of_the_noisy_chain(vocab, seed, alpha):
    """For every z in [V]^3: p(x^i = v | z^-i) = sum_x p(x) [x^i = v] prod_{j != i} q(z^j | x^j), normalised."""
    source, xs, p = small_chain(vocab, 3, seed)
    by_hand = loo_denoiser(p, xs, vocab)(alpha)
    got = loo_posterior(source.initial, source.transition, xs, alpha, vocab)
    torch.testing.assert_close(got, by_hand, rtol=0, atol=1e-12)
    per_row = torch.linspace(0.01, 0.99, len(xs), dtype=torch.float64)  # one alpha per sequence
    expected = torch.stack([loo_denoiser(p, xs, vocab)(a)[k] for k, a in enumerate(per_row.tolist())])
    torch.testing.assert_close(loo_posterior(source.initial, source.transition, xs, per_row, vocab), expected,
                               rtol=0, atol=1e-12)


def reverse_laws(vocab, s, t, seed=5):
    """On the enumerated chain (L = 3): the exact law of z_s given each z_t [Z_t, Z_s], and the law
    of one reverse step of the exact uniform teacher (SPEC.md §4.2 with x = its output), per position [Z, L, V]."""
    source, zs, p = small_chain(vocab, 3, seed)
    process = UniformProcess(vocab)
    alpha_s, alpha_t = process.alpha(s), process.alpha(t)
    marginal_s = kernel(alpha_s, vocab, zs, zs) @ p                                    # p(z_s)
    joint = kernel(alpha_t / alpha_s, vocab, zs, zs) * marginal_s                      # [z_t, z_s]
    exact = joint / joint.sum(-1, keepdim=True)
    logits = ExactUniformDenoiser(source, process)(zs, torch.full((len(zs),), -math.log(alpha_t), dtype=torch.float64))
    return exact, process.posterior(zs, logits.softmax(-1), s, t), zs


@pytest.mark.parametrize("vocab", [3, 4])
def test_one_reverse_step_of_the_exact_uniform_teacher_is_bayes_at_each_position(vocab):
    """Each position's law after one step of UniformProcess.reverse_step = its marginal under p(z_s | z_t)."""
    exact, step, zs = reverse_laws(vocab, 0.3, 0.7)
    torch.testing.assert_close(step, conditional(exact, zs, vocab), rtol=0, atol=1e-12)


def test_the_factorized_step_is_exact_in_the_limit_of_small_steps():
    """Drawing the positions of one step independently errs only when two or more change in the step,
    O(h^2) for a step h: total variation to p(z_s | z_t) falls 100-fold when h does 10-fold (up to O(h))."""
    def tv(h):
        exact, step, zs = reverse_laws(3, 0.5 - h, 0.5)
        product = torch.ones_like(exact)
        for i in range(zs.shape[1]):
            product = product * step[:, i, zs[:, i]]
        return (product - exact).abs().sum(-1).max().item() / 2
    big, small = tv(1e-2), tv(1e-3)
    assert big > 1e-6 and small / big < 0.02, (big, small)


def test_exact_uniform_denoiser_reads_alpha_from_the_process_time_input():
    source = data.MarkovSource(vocab_size=6, seq_len=10, seed=3)
    process = UniformProcess(6)
    z = torch.randint(6, (3, 10), generator=torch.Generator().manual_seed(0))
    got = process.denoise(ExactUniformDenoiser(source, process), z, 0.4).double().exp()
    torch.testing.assert_close(got, loo_posterior(source.initial, source.transition, z, process.alpha(0.4), 6),
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="states"):
        ExactUniformDenoiser(source, UniformProcess(7))


def ceiling(*flags):
    """GenPPL by (sampler, steps) from scripts/exact_ceiling.py's table."""
    result = run_script("scripts/exact_ceiling.py", "--seq-lens", "32", *flags)
    assert result.returncode == 0, result.stderr
    return {(cells[2].strip(), cells[3].strip()): float(cells[4])
            for cells in (line.split("|") for line in result.stdout.splitlines()[2:])}


def test_exact_ceiling_script_shows_fewer_steps_cost_genppl():
    """scripts/exact_ceiling.py: one step per token (L/1) beats one step for 32 tokens (L/32)."""
    genppl = ceiling("--num-samples", "64")
    assert genppl["cached", "L/1 = 32"] < genppl["cached", "L/32 = 1"] / 2
    assert genppl["-", "data"] <= genppl["cached", "L/1 = 32"] * 1.1
    assert "below 32" in assert_one_error_line(run_script("scripts/exact_ceiling.py", "--seq-lens", "16"))
    assert "invalid choice" in assert_one_error_line(run_script("scripts/exact_ceiling.py", "--process", "x"))


def test_exact_ceiling_script_runs_the_uniform_teacher_with_both_samplers():
    genppl = ceiling("--num-samples", "32", "--process", "uniform")
    for sampler in ("ancestral", "greedy-tail"):
        assert genppl[sampler, "L/1 = 32"] < genppl[sampler, "L/32 = 1"]
