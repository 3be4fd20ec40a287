"""corpora/markov.py: the synthetic source's exact n-gram law (SPEC.md §7.5) against brute-force
enumeration of every sequence the chain can make."""
import itertools

import pytest
import torch

from corpora.markov import MarkovSource


def enumerated_ngram_law(source, n, length):
    """sum over starts i <= length - n and over all V^L sequences x of p(x) [x_i..x_{i+n-1} = g],
    divided by the number of starts: the pooled law of an n-gram at a uniform start, from the exact
    sequence probabilities (log_prob, itself checked by enumeration in tests/test_data.py)."""
    vocab, starts = source.vocab_size, length - n + 1
    law = torch.zeros((vocab,) * n, dtype=torch.float64)
    every = torch.tensor(list(itertools.product(range(vocab), repeat=source.seq_len)))
    for x, p in zip(every.tolist(), source.log_prob(every).exp()):
        for i in range(starts):
            law[tuple(x[i:i + n])] += p / starts
    return law


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("length", [4, 5])
def test_ngram_marginal_is_the_pooled_ngram_law_of_every_enumerated_sequence(n, length):
    """V = 3, L = 5, a sparse chain (one of three successors has no mass but the floor): for n = 1, 2, 3,
    over the whole sequence and over its first four tokens."""
    source = MarkovSource(vocab_size=3, seq_len=5, branching=2, seed=3, floor=0.05)
    expected = enumerated_ngram_law(source, n, length)
    torch.testing.assert_close(source.ngram_marginal(n, length), expected, rtol=0, atol=1e-14)
