"""The exact denoiser of the synthetic Markov source, as a reference for the students.

An MDLM denoiser predicts each MASK position on its own: x_theta(z_t)_i ~ p(x_i | the
unmasked tokens of z_t). For the Markov source that conditional is computable exactly, by
forward-backward over the chain, so we can sample the *perfect* MDLM. Its GenPPL at k steps
is what the best possible teacher reaches in k steps; the gap to its GenPPL at L steps is
the price of drawing the tokens of one step independently, which no factorized denoiser can
avoid without giving up entropy.

The uniform-state process (processes/uniform.py) has an exact teacher too: its optimum is the
leave-one-out posterior p(x_i | z^-i), each z^j a noisy observation of x^j (SPEC.md §4.3),
the same forward-backward with other evidence.
"""
from types import SimpleNamespace

import torch

from data import MarkovSource


def chain_marginals(initial, transition, evidence, leave_out=False):
    """p(x_i = v | the evidence) for the chain with start distribution `initial` [V] and
    transition matrix `transition` [V, V], where evidence [N, L, V] holds the likelihood of each
    position's observation given x_i = v; with leave_out, position i's own observation is left
    out (p(x_i | the others)). [N, L, V] in float64.

    Forward-backward: a_i(v) = p(x_i = v, observations before i), b_i(v) = p(observations
    after i | x_i = v); a_i b_i (times evidence_i unless left out), normalised, is the answer.
    Messages are renormalised at each position, which leaves the normalised product unchanged
    and keeps it in range for long sequences.
    """
    n, length, vocab_size = evidence.shape
    initial, transition = initial.double().to(evidence.device), transition.double().to(evidence.device)

    def normalised(m):
        return m / m.sum(-1, keepdim=True)

    before = [initial.expand(n, -1)]
    for i in range(1, length):
        before.append(normalised((before[-1] * evidence[:, i - 1]) @ transition))
    after = [torch.ones(n, vocab_size, dtype=torch.float64, device=evidence.device)]
    for i in range(length - 1, 0, -1):
        after.append(normalised((evidence[:, i] * after[-1]) @ transition.T))
    product = torch.stack(before, 1) * torch.stack(after[::-1], 1)
    return normalised(product if leave_out else product * evidence)


def posterior(initial, transition, z, mask_id):
    """p(x_i = v | the non-MASK tokens of z) [N, L, V], float64: the evidence of an unmasked
    token is one-hot, that of a MASK all ones. Unmasked positions come out one-hot."""
    vocab_size = initial.numel()
    evidence = torch.ones(*z.shape, vocab_size, dtype=torch.float64, device=z.device)
    known = z != mask_id
    evidence[known] = torch.nn.functional.one_hot(z[known], vocab_size).double()
    return chain_marginals(initial, transition, evidence)


def loo_posterior(initial, transition, z, alpha, vocab):
    """p(x_i = v | z^-i) [N, L, V], float64: the UDLM optimum (SPEC.md §4.3) for the chain,
    when each z^j is a uniform-state observation of x^j, q(z^j | x^j) = alpha [z^j = x^j] + (1 - alpha)/V.
    alpha: a scalar or one per sequence [N]."""
    if initial.numel() != vocab:
        raise ValueError(f"the chain has {initial.numel()} states, the process {vocab}")
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=z.device).reshape(-1, 1, 1)
    evidence = alpha * torch.nn.functional.one_hot(z, vocab).double() + (1 - alpha) / vocab
    return chain_marginals(initial, transition, evidence, leave_out=True)


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


class ExactUniformDenoiser(ExactDenoiser):
    """The perfect UDLM of a Markov source for a UniformProcess, with a model's interface:
    forward(z, sigma) gives logits over the V states whose log_softmax is log p(x^i | z^-i).
    The process's time input is sigma = -log alpha_t (UniformProcess.noise_input), so alpha_t =
    exp(-sigma). Plugged into the posterior of SPEC.md §4.2, this is the exact reverse transition of each
    position; only drawing the positions of one step independently departs from the true reversal."""

    def __init__(self, source: MarkovSource, process):
        super().__init__(source)
        if process.vocab_size != source.vocab_size:
            raise ValueError(f"the source has {source.vocab_size} states, the process {process.vocab_size}")
        self.mask_id, self.vocab_size = None, process.vocab_size
        self.config = SimpleNamespace(seq_len=source.seq_len, time_conditioning=True)

    def forward(self, z, sigma):
        probs = loo_posterior(self.initial, self.transition, z, torch.exp(-sigma.double()), self.vocab_size)
        return probs.clamp_min(1e-300).log()  # float64, as reverse_step computes
