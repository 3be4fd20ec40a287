"""The synthetic source: a random sparse Markov chain over a small vocabulary, whose exact
log p(x) makes GenPPL exact (the judge is p itself) and whose exact denoisers
(evaluation/exact.py) are the perfect teachers.
"""
import torch

from diffusion import sample_categorical


class MarkovSource:
    """A random sparse Markov chain over a small vocabulary, with exact log p(x).

    Each state moves to `branching` successors with Dirichlet(1) weights, so samples have
    structure a model can learn, and GenPPL of generated text is exact (the judge is p itself).
    A `floor` of the mass is spread over all successors, so that one wrong token in a sample
    costs a finite (large) NLL instead of making its GenPPL infinite.
    """

    def __init__(self, vocab_size=16, seq_len=32, branching=3, seed=0, floor=0.01):
        self.vocab_size, self.seq_len, self.branching, self.seed = vocab_size, seq_len, branching, seed
        self.floor = floor
        g = torch.Generator().manual_seed(seed)
        self.initial = torch.rand(vocab_size, generator=g, dtype=torch.float64) + 0.1
        self.initial /= self.initial.sum()
        self.transition = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
        for state in range(vocab_size):
            successors = torch.randperm(vocab_size, generator=g)[:branching]
            weights = -torch.rand(branching, generator=g, dtype=torch.float64).log()  # Dirichlet(1)
            self.transition[state, successors] = weights / weights.sum()
        self.transition = (1 - floor) * self.transition + floor / vocab_size

    def meta(self):
        return {"kind": "synthetic", "vocab_size": self.vocab_size, "seq_len": self.seq_len,
                "branching": self.branching, "seed": self.seed, "floor": self.floor}

    def sample(self, n, generator=None):
        x = torch.empty(n, self.seq_len, dtype=torch.long)
        x[:, 0] = sample_categorical(self.initial.expand(n, -1), generator)
        for i in range(1, self.seq_len):
            x[:, i] = sample_categorical(self.transition[x[:, i - 1]], generator)
        return x

    def log_prob(self, x):
        """Exact log p(x) of sequences x [N, L] (-inf where a transition is impossible)."""
        x = x.cpu()
        logp = self.initial[x[:, 0]].log()
        return logp + self.transition[x[:, :-1], x[:, 1:]].log().sum(-1)

    def entropy_rate_bound(self):
        """H(p)/L in nats, by the chain rule with the exact marginals: the GenPPL floor is exp of it."""
        marginal, h = self.initial.clone(), -(self.initial * self.initial.clamp_min(1e-300).log()).sum()
        row_entropy = -(self.transition * self.transition.clamp_min(1e-300).log()).sum(-1)
        for _ in range(1, self.seq_len):
            h += (marginal * row_entropy).sum()
            marginal = marginal @ self.transition
        return float(h) / self.seq_len

    def ngram_marginal(self, n, length=None):
        """The exact law of an n-gram drawn at a uniform start position of a sequence of `length`
        (default L) tokens: sum over starts i of P(x_i, ..., x_{i+n-1}) / (length - n + 1), [V]^n,
        float64. What the n-gram statistics of samples pooled over positions estimate."""
        length = length or self.seq_len
        marginal, pooled = self.initial.clone(), 0
        for _ in range(length - n + 1):
            joint = marginal
            for _ in range(n - 1):
                joint = joint.unsqueeze(-1) * self.transition[(None,) * (joint.dim() - 1)]
            pooled = pooled + joint
            marginal = marginal @ self.transition
        return pooled / (length - n + 1)

    # the same interface as TokenStream
    def batch(self, split, n, seq_len, generator):
        if seq_len != self.seq_len:
            raise ValueError(f"the synthetic source has sequences of {self.seq_len} tokens, not {seq_len}")
        return self.sample(n, generator)

    @property
    def tokenizer(self):
        return SymbolTokenizer(self.vocab_size)


class SymbolTokenizer:
    """Synthetic tokens shown as short symbols: a..z, then t26, t27, ..."""

    def __init__(self, vocab_size):
        self.vocab_size, self.eos_id = vocab_size, None
        self.symbols = [chr(97 + i) if i < 26 else f"t{i}" for i in range(vocab_size)]

    def decode(self, ids):
        return " ".join(self.symbols[int(i)] for i in ids)

    def encode(self, text):
        lookup = {s: i for i, s in enumerate(self.symbols)}
        try:
            return [lookup[s] for s in text.split()]
        except KeyError as e:
            raise ValueError(f"{e.args[0]!r} is not a symbol of the synthetic source") from None
