"""evaluation/self_bleu.py: sacrebleu's self-BLEU against the hand-written Texygen BLEU it replaced."""
import collections
import importlib.util
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.self_bleu import self_bleu

token_rows = st.lists(st.integers(0, 50), min_size=1, max_size=40)

needs_sacrebleu = pytest.mark.skipif(importlib.util.find_spec("sacrebleu") is None,
                                     reason="needs the extras of requirements-eval.txt")


def texygen_bleu(hypothesis, references, max_n=4):
    """The hand-written sentence BLEU that self_bleu used before sacrebleu (the reference
    of the agreement tests): brevity penalty times the geometric mean of the clipped n-gram
    precisions, orders longer than the hypothesis skipped, a zero match count taken as 0.1.
    With one change: no matching token at all gives 0 (sacrebleu's rule, and NLTK's, which
    Texygen calls); the hand-written one gave 0.1^(orders) there."""
    def ngrams(tokens, n):
        return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    orders = range(1, min(max_n, len(hypothesis)) + 1)
    log_precision = 0.0
    for n in orders:
        counts, clip = ngrams(hypothesis, n), collections.Counter()
        for reference in references:
            clip |= ngrams(reference, n)
        matches = sum((counts & clip).values())
        if n == 1 and matches == 0:
            return 0.0
        log_precision += math.log(max(matches, 0.1) / sum(counts.values())) / len(orders)
    closest = min(references, key=lambda r: (abs(len(r) - len(hypothesis)), len(r)))
    return min(1.0, math.exp(1 - len(closest) / len(hypothesis))) * math.exp(log_precision)


def texygen_self_bleu(continuations):
    return sum(texygen_bleu(c, continuations[:i] + continuations[i + 1:])
               for i, c in enumerate(continuations)) / len(continuations)


@needs_sacrebleu
def test_self_bleu_from_sacrebleu_agrees_with_the_hand_written_one_on_a_fixed_set():
    """Five continuations of 50 tokens over 12 ids (so that n-grams repeat), as SDTT scores them."""
    continuations = torch.randint(0, 12, (5, 50), generator=torch.Generator().manual_seed(0)).tolist()
    continuations[1][:20] = continuations[0][:20]  # some shared 4-grams
    assert self_bleu(continuations) == pytest.approx(texygen_self_bleu(continuations), rel=1e-9)


@needs_sacrebleu
@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(token_rows, min_size=2, max_size=5))
def test_self_bleu_from_sacrebleu_agrees_with_the_hand_written_one(continuations):
    assert self_bleu(continuations) == pytest.approx(texygen_self_bleu(continuations), rel=1e-9)


@needs_sacrebleu
@settings(max_examples=50, deadline=None, derandomize=True)
@given(token_rows, st.integers(2, 5))
def test_self_bleu_of_identical_continuations_is_one(row, copies):
    assert self_bleu([row] * copies) == pytest.approx(1.0)


@needs_sacrebleu
@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(token_rows, min_size=2, max_size=5))
def test_self_bleu_is_between_zero_and_one(continuations):
    assert 0 <= self_bleu(continuations) <= 1 + 1e-12


@needs_sacrebleu
def test_self_bleu_brevity_penalty_and_disjoint_continuations():
    """[0..3] is a prefix of [0..7]: all its n-grams match, but it is half as long (brevity
    penalty exp(1 - 8/4)); [0..7]'s n-gram precisions against [0..3] are 4/8, 3/7, 2/6, 1/5."""
    longer = math.exp((math.log(4 / 8) + math.log(3 / 7) + math.log(2 / 6) + math.log(1 / 5)) / 4)
    assert self_bleu([[0, 1, 2, 3], list(range(8))]) == pytest.approx((math.exp(1 - 8 / 4) + longer) / 2)
    assert self_bleu([[0, 1, 2, 3], [4, 5, 6, 7]]) == 0


@needs_sacrebleu
def test_self_bleu_differs_from_the_hand_written_one_only_without_any_shared_token():
    """Unigram precision 1/2, bigram 0 matches floored to 0.1/1: both agree. No shared token:
    sacrebleu gives 0, the hand-written one gave the floors' geometric mean sqrt(0.1/2 * 0.1/1)."""
    assert self_bleu([[0, 1], [1, 2]]) == pytest.approx(math.sqrt(1 / 2 * 0.1 / 1))
    assert self_bleu([[0, 1], [2, 3]]) == 0
