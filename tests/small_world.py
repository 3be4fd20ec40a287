"""An enumerated world for exact tests of the uniform and absorbing NELBOs (SPEC.md §6.3).

All of [V]^L is enumerated (V^L sequences), and so is every noisy state z ([V]^L for the
uniform process, [V+1]^L with MASK = V for the absorbing one). The t-integral of the
continuous-time losses is a Gauss-Legendre rule on [0, 1] in float64 (t = u^3 and 400 nodes reach 1e-13
for the uniform loss; the absorbing integrand is a polynomial after the 1/t cancels). Every loss is
the library's own per-position integrand (uniform.udlm_loss), summed exactly over z and x;
`library_gap` integrates IDLM's student objective (idlm.teacher_fake_gap) the same way.
"""
import itertools

import numpy as np
import torch
import torch.nn.functional as F

import idlm
from processes.uniform import udlm_loss

NODES = 400


def sequences(vocab, length):
    """All of [vocab]^length as a [vocab^length, length] long tensor, in lexicographic order."""
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)), dtype=torch.long)


def gauss_legendre(n=NODES, power=3):
    """Nodes and weights of the n-point Gauss-Legendre rule on [0, 1] in u, with t = u^power, float64.

    The uniform integrand has a log singularity at t = 0 (a resampled position makes ratios of
    order 1/t with probability of order t); t = u^3 smooths it: plain Gauss-Legendre with 400
    nodes stops at 5e-6 (as a first check of SPEC.md §4.3 saw), with u^3 it reaches 1e-13."""
    u, weights = np.polynomial.legendre.leggauss(n)
    u = (u + 1) / 2
    return torch.tensor(u ** power), torch.tensor(weights / 2 * power * u ** (power - 1))


def dirichlet(n, seed):
    return torch.tensor(np.random.default_rng(seed).dirichlet(np.ones(n)))


def kl(p, q):
    """KL(p || q), with 0 log 0 = 0."""
    return float(torch.where(p > 0, p * (p / q).log(), torch.zeros_like(p)).sum())


def entropy(p):
    return float(-(p * p.log()).sum())


# ----------------------------------------------------------------------------- uniform process

def position_kernel(alpha, vocab):
    """q(z^i = a | x^i = b) = alpha [a = b] + (1 - alpha)/V, as a [V, V] matrix (rows: z)."""
    return alpha * torch.eye(vocab, dtype=torch.float64) + (1 - alpha) / vocab


def kernel(alpha, vocab, zs, xs, skip=None):
    """Q[z, x] = prod over positions (except `skip`) of q(z^i | x^i)."""
    k = position_kernel(alpha, vocab)
    out = torch.ones(len(zs), len(xs), dtype=torch.float64)
    for i in range(zs.shape[1]):
        if i != skip:
            out = out * k[zs[:, i]][:, xs[:, i]]
    return out


def conditional(weights, xs, vocab):
    """f[z, i, v] = sum_x weights[z, x] [x^i = v], normalised over v (weights: [Z, X], or a list of
    one [Z, X] per position)."""
    onehot = F.one_hot(xs, vocab).double()  # [X, L, V]
    per_position = weights if isinstance(weights, list) else [weights] * xs.shape[1]
    f = torch.stack([w @ onehot[:, i] for i, w in enumerate(per_position)], dim=1)
    return f / f.sum(-1, keepdim=True)


def loo_denoiser(p, xs, vocab):
    """The UDLM optimum (SPEC.md §4.3): f(z)^i = p(x^i | z^-i), a function of alpha -> [Z, L, V]."""
    return lambda alpha: conditional([kernel(alpha, vocab, xs, xs, skip=i) * p for i in range(xs.shape[1])],
                                     xs, vocab)


def posterior_denoiser(p, xs, vocab):
    """The denoising posterior f(z)^i = p(x^i | z) (not the UDLM optimum)."""
    return lambda alpha: conditional(kernel(alpha, vocab, xs, xs) * p, xs, vocab)


def uniform_expected_loss(f, targets, weights, vocab, eps=0.0, nodes=NODES):
    """sum_k weights[k] L_UDLM(f, targets[k]): targets [K, L, V] are one-hot sequences or product
    distributions G (the soft-x form, with z_t ~ Cat(alpha G + (1-alpha)/V) per position).
    f: alpha -> [Z, L, V] (Z = V^L); the schedule is log-linear, alpha_t = 1 - (1-eps) t."""
    length = targets.shape[1]
    zs = sequences(vocab, length)
    ts, ws = gauss_legendre(nodes)
    total = 0.0
    for t, w in zip(ts, ws):
        alpha, alpha_prime = 1 - (1 - eps) * t, -(1 - eps)
        marginal = alpha * targets + (1 - alpha) / vocab                          # [K, L, V]
        q = torch.ones(len(zs), len(targets), dtype=torch.float64)
        for i in range(length):
            q = q * marginal[:, i, zs[:, i]].T                                      # [Z, K]
        log_f = f(alpha).log()[:, None].expand(-1, len(targets), -1, -1)
        per = udlm_loss(log_f.reshape(-1, length, vocab), targets[None].expand(len(zs), -1, -1, -1)
                        .reshape(-1, length, vocab), zs[:, None].expand(-1, len(targets), -1).reshape(-1, length),
                        alpha, alpha_prime).sum(-1).reshape(len(zs), len(targets))
        total += w * float((q * per * weights).sum())
    return total


def uniform_marginal_at(p, xs, vocab, alpha):
    """The law of z_t when x ~ p: Q p over [V]^L."""
    return kernel(alpha, vocab, xs, xs) @ p


# ----------------------------------------------------------------------------- absorbing process

def absorbing_states(vocab, length):
    return sequences(vocab + 1, length)


def absorbing_kernel(alpha, vocab, zs, xs):
    """Q[z, x] = prod_i (alpha [z^i = x^i] + (1 - alpha) [z^i = MASK])."""
    k = torch.cat([alpha * torch.eye(vocab, dtype=torch.float64),
                   torch.full((1, vocab), 1 - alpha, dtype=torch.float64)])
    out = torch.ones(len(zs), len(xs), dtype=torch.float64)
    for i in range(zs.shape[1]):
        out = out * k[zs[:, i]][:, xs[:, i]]
    return out


def mdlm_denoiser(p, xs, vocab):
    """f(z)^i = p(x^i | the unmasked positions of z), the MDLM optimum (the same for every alpha)."""
    zs = absorbing_states(vocab, xs.shape[1])
    consistent = ((zs[:, None] == xs[None]) | (zs[:, None] == vocab)).all(-1).double()  # [Z, X]
    return conditional(consistent * p, xs, vocab).clamp_min(1e-300)


def mdlm_expected_loss(f, p, xs, vocab, eps=0.0, nodes=64):
    """E_{x~p} of the continuous-time MDLM NELBO: int w(t) sum_z q(z|x) sum_masked -log f(z)^i[x^i]."""
    zs = absorbing_states(vocab, xs.shape[1])
    ts, ws = gauss_legendre(nodes)
    masked = (zs == vocab).double()                                          # [Z, L]
    cross = -(f.log()[:, None] * F.one_hot(xs, vocab)[None]).sum(-1)          # [Z, X, L]
    per = (cross * masked[:, None]).sum(-1)                                 # [Z, X]
    total = 0.0
    for t, w in zip(ts, ws):
        alpha = 1 - (1 - eps) * t
        total += w * (1 - eps) / (1 - alpha) * float((absorbing_kernel(alpha, vocab, zs, xs) * per * p).sum())
    return total


# ----------------------------------------------------------------------------- IDLM's gap, through the library

def library_gap(process, forward, log_teacher, log_fake, xs, p, vocab, eps=0.0, nodes=NODES):
    """E_{x ~ p} int_0^1 E_{z ~ q_t(.|x)} of IDLM's student objective, the library's
    idlm.teacher_fake_gap at every (z, x) pair, summed over positions (SPEC.md §6.2-6.3). The integral
    is the Gauss-Legendre rule of `gauss_legendre` and the expectations are exact sums: forward =
    (every state z [Z, L], alpha -> the enumerated forward law Q[z, x]); log_teacher(alpha) and
    log_fake(alpha) -> [Z, L, V] the networks' log-outputs at every z (log-probabilities, or
    log-scores for SEDD); the schedule log-linear, alpha_t = 1 - (1 - eps) t."""
    (zs, law), length = forward, xs.shape[1]
    p, onehot = torch.as_tensor(p, dtype=torch.float64), F.one_hot(torch.as_tensor(xs), vocab).double()
    z_index, x_index = (i.reshape(-1) for i in torch.meshgrid(torch.arange(len(zs)), torch.arange(len(xs)),
                                                             indexing="ij"))
    ts, ws = gauss_legendre(nodes)
    total = 0.0
    for t, w in zip(ts, ws):
        alpha = 1 - (1 - eps) * t
        shares = idlm.teacher_fake_gap(log_teacher(alpha)[z_index], log_fake(alpha)[z_index], onehot[x_index],
                                       zs[z_index], t.expand(len(z_index)), process, shares=True)
        per_sequence = shares * shares.numel() * length                    # a share is a sum over the N L tokens
        total += w * float((law(alpha).reshape(-1) * p[x_index] * per_sequence).sum())
    return total


def uniform_forward(vocab, xs):
    """(every z of [V]^L, alpha -> q_t(z | x) of the uniform process) for library_gap."""
    zs = sequences(vocab, xs.shape[1])
    return zs, lambda alpha: kernel(alpha, vocab, zs, torch.as_tensor(xs))


def absorbing_forward(vocab, xs):
    """(every z of [V+1]^L, alpha -> q_t(z | x) of the absorbing process) for library_gap."""
    zs = absorbing_states(vocab, xs.shape[1])
    return zs, lambda alpha: absorbing_kernel(alpha, vocab, zs, torch.as_tensor(xs))
