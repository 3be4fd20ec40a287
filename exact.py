"""The exact denoiser of the synthetic Markov source, as a reference for the students.

An MDLM denoiser predicts each MASK position on its own: x_theta(z_t)_i ~ p(x_i | the
unmasked tokens of z_t). For the Markov source that conditional is computable exactly, by
forward-backward over the chain, so we can sample the *perfect* MDLM. Its GenPPL at k steps
is what the best possible teacher reaches in k steps; the gap to its GenPPL at L steps is
the price of drawing the tokens of one step independently, which no factorized denoiser can
avoid without giving up entropy.
"""
from types import SimpleNamespace

import torch

from data import MarkovSource


def posterior(initial, transition, z, mask_id):
    """p(x_i = v | the non-MASK tokens of z) for the chain with start distribution `initial`
    [V] and transition matrix `transition` [V, V], as [N, L, V] in float64.

    Forward-backward: a_i(v) = p(x_i = v, unmasked tokens up to i), b_i(v) = p(unmasked tokens
    after i | x_i = v); their product, normalised, is the posterior. Unmasked positions come
    out one-hot. Messages are renormalised at each position, which leaves the product's
    normalised value unchanged and keeps it in range for long sequences.
    """
    n, length = z.shape
    vocab_size = initial.numel()
    initial, transition = initial.double().to(z.device), transition.double().to(z.device)
    evidence = torch.ones(n, length, vocab_size, dtype=torch.float64, device=z.device)
    known = z != mask_id
    evidence[known] = torch.nn.functional.one_hot(z[known], vocab_size).double()

    def normalised(m):
        return m / m.sum(-1, keepdim=True)

    forward = [normalised(initial * evidence[:, 0])]
    for i in range(1, length):
        forward.append(normalised((forward[-1] @ transition) * evidence[:, i]))
    backward = [torch.ones(n, vocab_size, dtype=torch.float64, device=z.device)]
    for i in range(length - 1, 0, -1):
        backward.append(normalised((evidence[:, i] * backward[-1]) @ transition.T))
    return normalised(torch.stack(forward, 1) * torch.stack(backward[::-1], 1))


class ExactDenoiser(torch.nn.Module):
    """The perfect MDLM of a Markov source, with a model's interface: forward(z, noise) gives
    log-probabilities over V + 1 ids (MASK never predicted, as under SUBS)."""

    def __init__(self, source: MarkovSource):
        super().__init__()
        self.mask_id = source.vocab_size
        # the chain's tables are this model's (frozen) weights; .to(device) moves them
        self.initial = torch.nn.Parameter(source.initial.clone(), requires_grad=False)
        self.transition = torch.nn.Parameter(source.transition.clone(), requires_grad=False)
        self.config = SimpleNamespace(seq_len=source.seq_len, time_conditioning=False)

    def forward(self, z, noise=None):
        probs = posterior(self.initial, self.transition, z, self.mask_id)
        never_mask = torch.zeros(*z.shape, 1, dtype=probs.dtype, device=z.device)
        return torch.cat([probs, never_mask], -1).clamp_min(1e-300).log().float()
