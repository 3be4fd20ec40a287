"""exact.py: the exact denoiser of the Markov source, against brute-force enumeration."""
import itertools

import torch
from hypothesis import given, settings, strategies as st

import data
from diffusion import subs_log_probs
from exact import ExactDenoiser, posterior
from helpers import assert_one_error_line, run_script


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


def test_exact_ceiling_script_shows_fewer_steps_cost_genppl():
    """scripts/exact_ceiling.py: one step per token (L/1) beats one step for 32 tokens (L/32)."""
    result = run_script("scripts/exact_ceiling.py", "--seq-lens", "32", "--num-samples", "64")
    assert result.returncode == 0, result.stderr
    genppl = {cells[2]: float(cells[3]) for cells in (line.split("|") for line in result.stdout.splitlines()[2:])}
    assert genppl[" L/1 = 32 "] < genppl[" L/32 = 1 "] / 2 and genppl[" data "] <= genppl[" L/1 = 32 "] * 1.1
    assert "below 32" in assert_one_error_line(run_script("scripts/exact_ceiling.py", "--seq-lens", "16"))
