"""The absorbing (masking) diffusion process of MDLM, as small pure functions on tensors.

Read alongside SDTT section 2.1. Real tokens are 0..V-1 and MASK is id V, so a denoiser
emits V+1 logits per position. Time runs from t=0 (data) to t=1 (everything masked).
"""
import math

import torch
import torch.nn.functional as F

SCHEDULE_EPS = 1e-3   # log-linear schedule: alpha_1 = eps, so t=1 is (almost) all MASK
SAMPLING_EPS = 1e-3   # training draws t from [SAMPLING_EPS, 1]
T_MIN = 1e-5          # the sampler's last time, as MDLM samples


# ----------------------------------------------------------------------------- schedule

def alpha(t, eps=SCHEDULE_EPS):
    """alpha_t = exp(-sigma(t)) = 1 - (1-eps) t: the chance that a token is still clean."""
    return 1 - (1 - eps) * t


def sigma(t, eps=SCHEDULE_EPS):
    """Total noise of the log-linear schedule, sigma(t) = -log(1 - (1-eps) t)."""
    return -torch.log1p(-(1 - eps) * t)


def loss_weight(t, eps=SCHEDULE_EPS):
    """w(t) = -alpha'_t / (1 - alpha_t) of SDTT eq. 3; equals 1/t for the log-linear schedule."""
    return (1 - eps) / (1 - alpha(t, eps))


def antithetic_times(u0, n, sampling_eps=SAMPLING_EPS):
    """n stratified times on [sampling_eps, 1] from one uniform draw u0 (MDLM's low-variance t)."""
    t = (u0 + torch.arange(n, dtype=torch.float64) / n) % 1
    return ((1 - sampling_eps) * t + sampling_eps).float()


# ----------------------------------------------------------------------------- forward process

def forward_mask(x, alpha_t, u, mask_id):
    """z_t ~ q(z_t | x) for hard tokens x (SDTT eq. 1), given uniforms u of x's shape.

    Every position is MASK with probability 1 - alpha_t, independently. Passing the uniforms
    in keeps this pure, so a batch's noise can be drawn once and split across processes.
    """
    move_chance = 1 - alpha_t.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.where(u < move_chance, torch.full_like(x, mask_id), x)


def forward_sample_soft(x_probs, alpha_t, mask_id, generator=None):
    """z_t ~ q(z_t | x) for a soft x (a distribution over the V real tokens per position).

    With probability 1 - alpha_t a position is MASK, otherwise it is a token drawn from x.
    Used by IDLM, whose student emits points on the simplex.
    """
    tokens = sample_categorical(x_probs, generator)
    u = torch.rand(tokens.shape, generator=generator, device=generator_device(generator, tokens))
    return forward_mask(tokens, alpha_t, u.to(tokens.device), mask_id)


# ----------------------------------------------------------------------------- denoiser output

def subs_log_probs(logits, z_t, mask_id):
    """SUBS parameterization (MDLM): log x_theta(z_t) over V+1 ids, computed in float32.

    Zero mass on MASK ("no re-masking"), and the one-hot of z_t wherever z_t is not MASK
    ("carry-over"), whatever the network said there.
    """
    logits = logits.float().clone()  # a copy: the caller's logits (and their autograd graph) stay intact
    logits[..., mask_id] = -math.inf
    log_probs = logits.log_softmax(-1)
    revealed = (z_t != mask_id).unsqueeze(-1)
    carry = torch.full_like(log_probs, -math.inf).scatter_(-1, z_t.unsqueeze(-1), 0.0)
    return torch.where(revealed, carry, log_probs)


def denoise(model, z_t, t, mask_id, time_conditioned=False):
    """log x_theta(z_t, t). MDLM's released models are not time-conditioned: they get sigma=0."""
    noise = sigma(t) if time_conditioned else torch.zeros_like(t)
    return subs_log_probs(model(z_t, noise), z_t, mask_id)


# ----------------------------------------------------------------------------- objective

def masked_nll(log_x, x, z_t, mask_id):
    """-log x_theta(z_t)[x] at MASK positions of z_t, 0 elsewhere; shape of x."""
    nll = -log_x.gather(-1, x.unsqueeze(-1)).squeeze(-1)
    return torch.where(z_t == mask_id, nll, torch.zeros_like(nll))


def nelbo_loss(model, x, t, u, mask_id, time_conditioned=False):
    """Monte-Carlo estimate of the continuous-time NELBO (SDTT eq. 3), per token.

    x: clean tokens [N, L]; t: times [N] (antithetic, see `antithetic_times`);
    u: uniforms [N, L] that decide which positions are masked.
    """
    z_t = forward_mask(x, alpha(t), u, mask_id)
    log_x = denoise(model, z_t, t, mask_id, time_conditioned)
    per_position = loss_weight(t)[:, None] * masked_nll(log_x, x, z_t, mask_id)
    return per_position.sum() / x.numel()


# ----------------------------------------------------------------------------- reverse process

def reverse_posterior(z_t, x_probs, alpha_s, alpha_t, mask_id):
    """q(z_s | z_t, x) of SDTT eq. 2 in closed form, over V+1 ids, in float64.

    Where z_t is MASK: a real token v with probability (alpha_s - alpha_t)/(1 - alpha_t) x[v],
    MASK with probability (1 - alpha_s)/(1 - alpha_t). Elsewhere z_t carries over unchanged.
    x_probs: [N, L, V] or [N, L, V+1] (a MASK column, zero under SUBS, is ignored).
    """
    x_probs = x_probs[..., :mask_id].double()
    shape = (-1,) + (1,) * (z_t.dim() - 1)
    alpha_s = torch.as_tensor(alpha_s, dtype=torch.float64, device=z_t.device).reshape(shape)
    alpha_t = torch.as_tensor(alpha_t, dtype=torch.float64, device=z_t.device).reshape(shape)
    unmask = unmask_probability(alpha_s, alpha_t)
    stay_masked = (1 - alpha_s) / (1 - alpha_t)
    from_mask = torch.cat([unmask[..., None] * x_probs,
                           stay_masked[..., None].expand(*x_probs.shape[:-1], 1)], dim=-1)
    carry = F.one_hot(z_t, mask_id + 1).double()
    return torch.where((z_t == mask_id).unsqueeze(-1), from_mask, carry)


def generator_device(generator, like):
    return generator.device if generator is not None else like.device


def sample_categorical(probs, generator=None, num_samples=None):
    """Draw from the categorical rows of probs [..., K] by inverse CDF in float64.

    float32 noise truncates the tail (its uniforms have 24 bits), which silently lowers the
    temperature; float64 resolves probabilities far below 1e-8. Returns [...] indices, or
    [..., num_samples] when num_samples is given (all from the same rows).
    """
    cdf = probs.double().cumsum(-1)
    n = 1 if num_samples is None else num_samples
    u = torch.rand(*cdf.shape[:-1], n, dtype=torch.float64, generator=generator,
                   device=generator_device(generator, cdf)).to(cdf.device)
    draws = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
    return draws.squeeze(-1) if num_samples is None else draws


def unmask_probability(alpha_s, alpha_t):
    """(alpha_s - alpha_t) / (1 - alpha_t): the chance that a MASK at time t is revealed by s."""
    return (alpha_s - alpha_t) / (1 - alpha_t)


def reveal(log_x, z_t, p_unmask, mask_id, generator=None):
    """Draw z_s from eq. 2 in two stages that factor it exactly: each MASK is revealed with
    probability p_unmask, and a revealed position takes a token drawn from x_theta.

    The float64 categorical then runs only on the positions revealed in this step, not on
    a [N, L, V+1] posterior (3.3 GB in float64 for 8 x 1024 GPT-2 tokens). Only MASK
    positions are drawn, and only over real tokens, so log_x may be SUBS log-probs or the
    raw logits: a softmax over the real tokens of a revealed row gives x_theta either way.
    """
    p_unmask = torch.as_tensor(p_unmask, dtype=torch.float64, device=z_t.device)
    p_unmask = p_unmask.reshape(-1, *([1] * (z_t.dim() - 1)))
    u = torch.rand(z_t.shape, dtype=torch.float64, generator=generator,
                   device=generator_device(generator, z_t)).to(z_t.device)
    revealed = (z_t == mask_id) & (u < p_unmask)
    z_s = z_t.clone()
    z_s[revealed] = sample_categorical(log_x[revealed][:, :mask_id].double().softmax(-1), generator)
    return z_s


def reverse_step(log_x, z_t, alpha_s, alpha_t, mask_id, generator=None):
    """One ancestral step z_t -> z_s ~ p_theta(z_s | z_t) = q(z_s | z_t, x = x_theta(z_t))."""
    return reveal(log_x, z_t, unmask_probability(alpha_s, alpha_t), mask_id, generator)


@torch.no_grad()
def sample(model, z, steps, mask_id, *, t_min=T_MIN, final="argmax", cache=True,
           time_conditioned=False, generator=None, progress=None):
    """Ancestral sampling from z (all MASK, or MASK after a prompt) in `steps` uniform steps.

    The grid runs from t=1 down to t_min. Positions that are not MASK in z (a prompt) are
    never changed, because the posterior carries unmasked tokens over. At the end, positions
    still MASK are filled with the model's prediction: argmax ("noise removal") or a sample.

    Prediction caching: without time conditioning, x_theta depends on z alone, so when a
    step changes no position the next step reuses the previous output.
    SUBS is implicit here: only MASK positions are ever drawn, and only over real tokens, so
    the raw logits serve and the full [N, L, V+1] log-softmax is never computed.
    Returns (tokens, number of network forward passes).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    times = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)
    n = z.shape[0]
    logits, forward_passes = None, 0

    def predict(t):
        noise = sigma(t) if time_conditioned else torch.zeros_like(t)
        return model(z, noise.float().expand(n).to(z.device))

    for i in range(steps):
        if logits is None:
            logits, forward_passes = predict(times[i]), forward_passes + 1
        z_new = reverse_step(logits, z, alpha(times[i + 1]), alpha(times[i]), mask_id, generator)
        if not (cache and not time_conditioned and torch.equal(z_new, z)):
            logits = None
        z = z_new
        if progress is not None:
            progress.update(1)
    still_masked = z == mask_id
    if still_masked.any():
        if logits is None:
            logits, forward_passes = predict(times[-1]), forward_passes + 1
        real = logits[still_masked][:, :mask_id]
        z[still_masked] = real.argmax(-1) if final == "argmax" else sample_categorical(
            real.double().softmax(-1), generator)
    return z, forward_passes
