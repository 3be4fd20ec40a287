"""Tests of evaluation/likelihood.py: the AR log-likelihood is our AR NLL and obeys the chain rule; the
diffusion NELBO never masks the context, is tight for the exact denoiser of the synthetic
source and an upper bound for a model that is not exact."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from data import MarkovSource
from diffusion import MaskingProcess
from evaluate import ARJudge
from evaluation import likelihood
from evaluation.exact import ExactDenoiser
from helpers import L, RecordingModel, V, examples, random_dit, seeds, tiny_model

SOURCE = MarkovSource(vocab_size=V, seq_len=L, branching=3, seed=0)


def exact_nll(context, continuation):
    """-log p(continuation | context) of the Markov source: the chain rule on its prefixes."""
    def log_p(tokens):
        return SOURCE.log_prob(torch.tensor([tokens]))[0].item() if tokens else 0.0
    return log_p(context) - log_p(context + continuation)


def source_split(seed, context_len):
    x = SOURCE.sample(1, torch.Generator().manual_seed(seed))[0].tolist()
    return x[:context_len], x[context_len:]


# ----------------------------------------------------------------------------- AR: exact

@examples(10)
@given(seeds, st.integers(1, L - 1))
def test_ar_log_likelihood_is_our_ar_judges_nll(seed, length):
    model, bos = tiny_model("ar"), 0
    x = torch.randint(0, V, (1, length), generator=torch.Generator().manual_seed(seed))
    nll, _ = likelihood.ar_continuation(model, [bos], x[0].tolist())
    judged = ARJudge(model, bos).nll_per_token(x).item() * length
    assert nll == pytest.approx(judged, rel=1e-5)


@examples(10)
@given(seeds, st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
def test_ar_log_likelihood_obeys_the_chain_rule(seed, a, b, c):
    model = tiny_model("ar")
    x = torch.randint(0, V, (a + b + c,), generator=torch.Generator().manual_seed(seed)).tolist()
    context, first, second = x[:a], x[a:a + b], x[a + b:]
    whole, _ = likelihood.ar_continuation(model, context, first + second)
    parts = likelihood.ar_continuation(model, context, first)[0] + \
        likelihood.ar_continuation(model, context + first, second)[0]
    assert whole == pytest.approx(parts, rel=1e-5)


def test_ar_greedy_is_true_for_the_models_own_greedy_continuation():
    model, prompt = tiny_model("ar"), torch.tensor([[1, 2, 3]])
    greedy = model.generate(prompt, 6, top_p=1e-12)[0, 3:].tolist()  # a one-token nucleus: argmax
    assert likelihood.ar_continuation(model, [1, 2, 3], greedy)[1]
    other = [(greedy[0] + 1) % V] + greedy[1:]
    assert not likelihood.ar_continuation(model, [1, 2, 3], other)[1]


def test_ar_scoring_refuses_an_empty_context_and_cuts_a_long_one_on_the_left():
    model = tiny_model("ar")
    with pytest.raises(ValueError, match="give a context or a start token"):
        likelihood.ar_continuation(model, [], [1, 2])
    long_context = list(range(V)) * 4
    cut = likelihood.ar_continuation(model, long_context[-(L + 1 - 3):], [1, 2, 3])[0]
    assert likelihood.ar_continuation(model, long_context, [1, 2, 3])[0] == pytest.approx(cut)


# ----------------------------------------------------------------------------- diffusion: the NELBO

@examples(10)
@given(seeds, st.integers(0, L - 1))
def test_nelbo_never_masks_the_context_and_masks_only_the_continuation(seed, context_len):
    model, process = RecordingModel(random_dit(0, V, L)), MaskingProcess(V)
    context, continuation = source_split(seed, context_len)
    likelihood.diffusion_continuation(model, process, context, continuation, 16,
                                      torch.Generator().manual_seed(seed))
    nelbo_inputs, one_pass = model.inputs
    assert (nelbo_inputs[:, :context_len] == torch.tensor(context, dtype=torch.long)).all()
    assert (one_pass[0, context_len:] == process.mask_id).all() and (one_pass[0, :context_len] != V).all()


def test_nelbo_of_the_exact_denoiser_is_the_exact_nll():
    """With the exact conditionals every any-order factorisation is log p, so the NELBO's
    expectation is -log p(continuation | context) up to the O(1e-3) cut of times below
    SAMPLING_EPS and of the schedule's alpha_1 = eps. 40 independent estimates of K = 32:
    their mean within 5 standard errors (plus that 0.5% bias) of the truth."""
    model, process = ExactDenoiser(SOURCE), MaskingProcess(V)
    for seed, context_len in [(1, 0), (2, 5), (3, 12)]:
        context, continuation = source_split(seed, context_len)
        generator = torch.Generator().manual_seed(seed)
        estimates = torch.tensor([likelihood.diffusion_continuation(model, process, context, continuation,
                                                                    32, generator)[0] for _ in range(40)])
        truth = exact_nll(context, continuation)
        tolerance = 5 * estimates.std().item() / math.sqrt(len(estimates)) + 0.005 * truth
        assert abs(estimates.mean().item() - truth) < tolerance, (estimates.mean().item(), truth)


@examples(5)
@given(seeds, st.integers(0, L - 4))
def test_nelbo_of_a_model_that_is_not_exact_bounds_the_exact_nll(seed, context_len):
    model, process = random_dit(seed, V, L), MaskingProcess(V)
    context, continuation = source_split(seed, context_len)
    bound, _ = likelihood.diffusion_continuation(model, process, context, continuation, 64,
                                                 torch.Generator().manual_seed(seed))
    assert bound >= exact_nll(context, continuation)


def test_nelbo_batches_do_not_change_the_estimate():
    model, process = random_dit(0, V, L), MaskingProcess(V)
    x, scored = torch.arange(L) % V, torch.arange(L) >= 4
    whole = likelihood.nelbo(model, process, x, scored, 8, torch.Generator().manual_seed(0))
    split = likelihood.nelbo(model, process, x, scored, 8, torch.Generator().manual_seed(0), batch_size=3)
    assert split == pytest.approx(whole, rel=1e-5)


def test_one_pass_greedy_of_the_exact_denoiser_is_the_most_likely_token():
    model, process = ExactDenoiser(SOURCE), MaskingProcess(V)
    context = [0, 1]
    best = SOURCE.transition[1].argmax().item()
    assert likelihood.one_pass_greedy(model, process, torch.tensor(context + [best]), torch.arange(3) == 2)
    assert not likelihood.one_pass_greedy(model, process, torch.tensor(context + [(best + 1) % V]),
                                          torch.arange(3) == 2)


# ----------------------------------------------------------------------------- windows

@examples(30)
@given(st.lists(st.integers(0, 9), max_size=40), st.integers(1, 12))
def test_rolling_windows_cover_the_text_once_each_after_all_its_past(tokens, width):
    windows = likelihood.rolling_windows(tokens, width)
    assert sum((window for _, window in windows), []) == tokens
    assert all(context == tokens[:len(context)] and 1 <= len(window) <= width for context, window in windows)


def test_fit_window_refuses_what_cannot_be_scored():
    with pytest.raises(ValueError, match="empty continuation"):
        likelihood.fit_window([1], [], 4)
    with pytest.raises(ValueError, match="does not fit"):
        likelihood.fit_window([], [1] * 5, 4)
    assert likelihood.fit_window([1, 2, 3], [4, 5], 4) == [2, 3, 4, 5]
