"""Diffusion processes as values: a noise schedule, the interface every process gives (`Process`),
and the absorbing (masking) process of MDLM (`MaskingProcess`).

Read alongside SPEC.md §1 (SDTT section 2.1; MDLM). Real tokens are 0..V-1 and MASK is id V,
so a denoiser emits V+1 logits per position. Time runs from t=0 (data) to t=1 (everything masked).

The math is small pure functions on tensors (`forward_mask`, `reverse_posterior`, ...). A
*process* bundles them with a *schedule* into the one value that methods receive: sdtt.py,
idlm.py, the samplers and train.py never name a schedule or the MASK id themselves, and they ask
a process what it can do (`has_mask`, `takes_prompt`, `has_scores`) instead of guessing.
- A schedule is alpha(t) and its derivative; the NELBO weight w(t) = -alpha'/(1-alpha) and the
  total noise sigma(t) = -log alpha_t follow from them. A new schedule is one class here.
- A process is the forward corruption, its exact reverse posterior, one reverse step, the
  parameterization of the denoiser and the NELBO: the methods of `Process`. The other processes
  (uniform-state, SEDD) live in processes/ and are registered in processes/registry.py.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch
import torch.nn.functional as F

SAMPLING_EPS = 1e-3   # training draws t from [SAMPLING_EPS, 1]
T_MIN = 1e-5          # the sampler's last time, as MDLM samples


# ----------------------------------------------------------------------------- schedules

def as_time(t):
    """A time as a tensor: tensors keep their dtype, Python numbers become float64."""
    return t if torch.is_tensor(t) else torch.tensor(t, dtype=torch.float64)


class Schedule:
    """alpha(t): the chance that a token is still clean at time t, from alpha(0) = 1 down to
    alpha(1) = eps. Subclasses give alpha and its derivative; the rest is generic."""

    def alpha(self, t):
        raise NotImplementedError

    def alpha_prime(self, t):
        raise NotImplementedError

    def sigma(self, t):
        """Total noise sigma(t) = -log alpha_t: the time input of a time-conditioned network."""
        return -torch.log(self.alpha(as_time(t)))

    def loss_weight(self, t):
        """w(t) = -alpha'_t / (1 - alpha_t), the NELBO weight of SDTT eq. 3 (a product with the
        reciprocal, whose rounding SPEC.md §1.1 pins)."""
        return -self.alpha_prime(t) * (1 / (1 - self.alpha(t)))

    def time_of(self, alpha):
        """The t in [0, 1] with alpha(t) = alpha (alpha falls with t), by bisection in float64."""
        low, high = 0.0, 1.0
        for _ in range(60):
            middle = (low + high) / 2
            low, high = (middle, high) if self.alpha(as_time(middle)) > alpha else (low, middle)
        return (low + high) / 2


@dataclass(frozen=True)
class LogLinear(Schedule):
    """alpha_t = 1 - (1-eps) t, i.e. sigma(t) = -log(1 - (1-eps) t) (MDLM's default); w(t) = 1/t."""
    eps: float = 1e-3

    def alpha(self, t):
        return 1 - (1 - self.eps) * t

    def alpha_prime(self, t):
        return -(1 - self.eps) * torch.ones_like(as_time(t))

    def sigma(self, t):
        return -torch.log1p(-(1 - self.eps) * as_time(t))


@dataclass(frozen=True)
class Cosine(Schedule):
    """alpha_t = 1 - (1-eps) sin(pi t / 2): MD4's cosine schedule, cos(pi/2 (1-t)), with alpha_1 = eps.
    Slower masking at first; w(t) = (pi/2) cot(pi t / 2)."""
    eps: float = 1e-3

    def alpha(self, t):
        return 1 - (1 - self.eps) * torch.sin(math.pi / 2 * as_time(t))

    def alpha_prime(self, t):
        return -(1 - self.eps) * math.pi / 2 * torch.cos(math.pi / 2 * as_time(t))


SCHEDULES = {"loglinear": LogLinear, "cosine": Cosine}


def antithetic_times(u0, n, sampling_eps=SAMPLING_EPS):
    """n stratified times on [sampling_eps, 1] from one uniform draw u0 (MDLM's low-variance t)."""
    t = (u0 + torch.arange(n, dtype=torch.float64) / n) % 1
    return ((1 - sampling_eps) * t + sampling_eps).float()


def time_grid(steps, t_min=T_MIN):
    """The sampler's uniform grid from t=1 down to t_min, in float64: steps + 1 times."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64)


def step_size(steps, t_min=T_MIN):
    """The spacing of `time_grid(steps)`: SDTT's teacher step delta for a k-step sampler."""
    return (1 - t_min) / steps


# ----------------------------------------------------------------------------- categorical draws

def generator_device(generator, like):
    return generator.device if generator is not None else like.device


def sample_categorical(probs, generator=None, num_samples=None):
    """Draw from the categorical rows of probs [..., K] by inverse CDF in float64: float32 noise
    truncates the tail (its uniforms have 24 bits), which silently lowers the temperature; float64
    resolves probabilities far below 1e-8. Returns [...] indices, or [..., num_samples] when
    num_samples is given (all from the same rows)."""
    cdf = probs.double().cumsum(-1)
    n = 1 if num_samples is None else num_samples
    u = torch.rand(*cdf.shape[:-1], n, dtype=torch.float64, generator=generator,
                   device=generator_device(generator, cdf)).to(cdf.device)
    draws = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
    return draws.squeeze(-1) if num_samples is None else draws


def shaped_probs(logits, temperature=1.0, top_p=1.0):
    """softmax(logits) at a temperature and nucleus, float64 [..., K]: p^(1/T) normalised, then only the
    smallest set of the most probable entries whose mass reaches top_p, renormalised. Every sampler,
    diffusion (samplers.Shaped) and AR, draws through it (SPEC.md §7.5)."""
    probs = (logits.double() / temperature).softmax(-1)
    if top_p >= 1.0:
        return probs
    ordered, order = probs.sort(-1, descending=True)
    drop = ordered.cumsum(-1) - ordered >= top_p
    kept = probs.scatter(-1, order, ordered.masked_fill(drop, 0.0))
    return kept / kept.sum(-1, keepdim=True)


# ----------------------------------------------------------------------------- the interface of a process

class Process(Protocol):
    """What every diffusion process gives the rest of the code (SPEC.md §1.6). Training,
    distillation, the samplers, the likelihood and the checkpoints use nothing else; a new process
    is one class with these members plus one line in processes/registry.py. Tensors: x clean tokens
    [N, L]; z_t noisy states [N, L] (float latents [N, L, V] for Duo's Gaussian view); t, s times (a
    number or [N]); x_probs a soft x [N, L, V]; u uniforms [N, L]."""
    # what it is
    name: str                 # its key in processes.registry.PROCESSES, recorded in a checkpoint
    family: str               # "absorbing" (MASK state) or "uniform": what --process names
    vocab_size: int           # V: the states of a position besides MASK (the uniform process's noise support)
    tokens: int               # the ids a tokenizer decodes (<= V; Duo's [PAD] is a state, not a token):
                              # every sample's ids are below it
    schedule: Schedule        # alpha(t)
    time_conditioned: bool    # the network sees sigma(t); if not, its output depends on z_t alone
    default_sampler: str      # the sampler sample.py and evaluation/sweep.py use unless told
    # what it can do: callers ask these, never guess from other members
    has_mask: bool            # MASK (id mask_id = V) is a state: revealed tokens never change again
    takes_prompt: bool        # given tokens stay fixed while the rest is sampled (prompts, infill, LAMBADA)
    has_scores: bool          # the network gives concrete scores (SEDD): the score samplers apply
    mask_id: Optional[int]    # V when has_mask, else None
    loss_gap: Optional[Callable]  # soft_loss(teacher) - soft_loss(fake) as one sum, or None (idlm.py);
                              # both with shares=True give each sequence's share [N]

    def config(self) -> dict: ...                              # what a checkpoint records to rebuild it
    def alpha(self, t): ...                                    # the chance a token is still clean at t
    def loss_weight(self, t): ...                              # the NELBO's weight at t
    def noise_input(self, t, n, device): ...                   # the network's time input, [n]
    def prior(self, n, length, device, generator=None): ...    # z_1
    def forward_sample(self, x, t, u): ...                     # z_t ~ q(z_t | x), from uniforms u
    def forward_sample_soft(self, x_probs, t, generator=None): ...  # z_t ~ q(z_t | x) for a soft x
    def loss_positions(self, z_t): ...                         # where the NELBO has terms, bool [N, L]
    def denoise(self, model, z_t, t): ...                      # log x_theta(z_t, t)
    def loss_log_outputs(self, model, z_t, t): ...             # what soft_loss scores, over the V tokens
    def posterior(self, z_t, x_probs, s, t): ...               # q(z_s | z_t, x), exactly, float64
    def reverse_step(self, logits, z_t, s, t, generator=None): ...  # z_s ~ q(z_s | z_t, x_theta(z_t))
    def final_positions(self, z): ...                          # where the final pass at t_min decides, bool
    def final_step(self, logits, z, t, final, generator=None): ...  # that pass: the tokens of a sample
    def loss(self, model, x, t, u): ...                        # the training loss, per token
    def nelbo(self, model, x, t, u, scored=None): ...          # NELBO nats, only `scored` noised and counted
    def soft_loss(self, log_f, x_probs, z_t, t, shares=False): ...  # the loss of a soft x (IDLM), per token
    def latent_log_prob(self, x_probs, z_t, t): ...            # log q(z_t | soft x) per sequence, [N]
    # has_mask only: the two stages of a reverse step, and the fill of a MASK row after the last one
    def reveal_positions(self, z_t, s, t, generator=None): ...
    def draw(self, rows, generator=None): ...
    def final_tokens(self, rows, final, generator=None): ...
    # has_scores only: log s_theta(z_t, t) over the V+1 ids
    def scores(self, model, z_t, t): ...


def per_token(terms, shares=False):
    """A loss per token from its terms [N, L]: their sum over the N L positions; with shares, each
    sequence's part of that sum [N] (they add up to the loss; idlm.relaxed_gap weighs by them)."""
    return (terms.sum(-1) if shares else terms.sum()) / terms.numel()


def output_rows(model, z_t, sigma, rows):
    """The network's logits at the (sequence, position) rows of z_t only: a DiT runs its output layer
    (V+1 wide: the largest matmul and activation) at those rows alone; any other network runs whole."""
    if not hasattr(model, "trunk"):
        return model(z_t, sigma)[rows]
    hidden, c = model.trunk(z_t, sigma)
    return model.head(hidden[rows], c[rows[0]])


# ----------------------------------------------------------------------------- the absorbing process, as math

def per_row(value, like):
    """A scalar or per-sequence [N] value shaped to broadcast against like [N, ...]."""
    return torch.as_tensor(value, device=like.device).reshape(-1, *([1] * (like.dim() - 1)))


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


def masked_nll(log_x, x, z_t, mask_id):
    """-log x_theta(z_t)[x] at MASK positions of z_t, 0 elsewhere; shape of x."""
    nll = -log_x.gather(-1, x.unsqueeze(-1)).squeeze(-1)
    return torch.where(z_t == mask_id, nll, torch.zeros_like(nll))


def unmask_probability(alpha_s, alpha_t):
    """(alpha_s - alpha_t) / (1 - alpha_t): the chance that a MASK at time t is revealed by s."""
    return (alpha_s - alpha_t) / (1 - alpha_t)


def reverse_posterior(z_t, x_probs, alpha_s, alpha_t, mask_id):
    """q(z_s | z_t, x) of SDTT eq. 2 in closed form, over V+1 ids, in float64.

    Where z_t is MASK: a real token v with probability (alpha_s - alpha_t)/(1 - alpha_t) x[v],
    MASK with probability (1 - alpha_s)/(1 - alpha_t). Elsewhere z_t carries over unchanged.
    x_probs: [N, L, V] or [N, L, V+1] (a MASK column, zero under SUBS, is ignored).
    """
    x_probs = x_probs[..., :mask_id].double()
    alpha_s, alpha_t = (per_row(torch.as_tensor(a, dtype=torch.float64), z_t) for a in (alpha_s, alpha_t))
    unmask = unmask_probability(alpha_s, alpha_t)
    stay_masked = (1 - alpha_s) / (1 - alpha_t)
    from_mask = torch.cat([unmask[..., None] * x_probs,
                           stay_masked[..., None].expand(*x_probs.shape[:-1], 1)], dim=-1)
    carry = F.one_hot(z_t, mask_id + 1).double()
    return torch.where((z_t == mask_id).unsqueeze(-1), from_mask, carry)


def reveal_positions(z_t, p_unmask, mask_id, generator=None):
    """The first stage of `reveal`: which MASK positions of z_t are revealed (each with
    probability p_unmask, from one float64 uniform per position)."""
    p_unmask = per_row(torch.as_tensor(p_unmask, dtype=torch.float64), z_t)
    u = torch.rand(z_t.shape, dtype=torch.float64, generator=generator,
                   device=generator_device(generator, z_t)).to(z_t.device)
    return (z_t == mask_id) & (u < p_unmask)


def draw_tokens(rows, mask_id, generator=None):
    """The second stage of `reveal`: a token for each row of logits or log-probs [M, >= V],
    drawn in float64 from the softmax over the real tokens (the MASK column is ignored)."""
    return sample_categorical(rows[:, :mask_id].double().softmax(-1), generator)


def reveal(log_x, z_t, p_unmask, mask_id, generator=None):
    """Draw z_s from eq. 2 in two stages that factor it exactly: each MASK is revealed with
    probability p_unmask, and a revealed position takes a token drawn from x_theta.

    The float64 categorical then runs only on the positions revealed in this step, not on
    a [N, L, V+1] posterior (3.3 GB in float64 for 8 x 1024 GPT-2 tokens). Only MASK
    positions are drawn, and only over real tokens, so log_x may be SUBS log-probs or the
    raw logits: a softmax over the real tokens of a revealed row gives x_theta either way.
    (samplers.py's fast path runs the same two stages, with the output layer applied
    between them to the revealed rows only.)
    """
    revealed = reveal_positions(z_t, p_unmask, mask_id, generator)
    z_s = z_t.clone()
    z_s[revealed] = draw_tokens(log_x[revealed], mask_id, generator)
    return z_s


# ----------------------------------------------------------------------------- the absorbing process, as a value

class MaskingProcess:
    """The absorbing process of MDLM under a schedule: tokens turn into MASK and stay MASK.

    The denoiser x_theta(z_t, t) uses the SUBS parameterization. time_conditioned: whether the
    network sees sigma(t) (MDLM's released models do not: they get sigma = 0, which is what makes
    prediction caching valid).
    """
    name = family = "absorbing"
    default_sampler = "cached"  # exact ancestral sampling (the same tokens as "ancestral"), the least work
    has_mask = takes_prompt = True
    has_scores = False

    def __init__(self, vocab_size, schedule=None, time_conditioned=False):
        self.vocab_size = self.tokens = vocab_size
        self.mask_id = vocab_size
        self.schedule = schedule if schedule is not None else LogLinear()
        self.time_conditioned = time_conditioned

    def config(self):
        """What a checkpoint records to rebuild this process (processes.registry.process_from_config)."""
        return {"kind": self.name, "schedule": type(self.schedule).__name__.lower(), "eps": self.schedule.eps}

    def alpha(self, t):
        return self.schedule.alpha(t)

    def loss_weight(self, t):
        return self.schedule.loss_weight(t)

    def noise_input(self, t, n, device):
        """The network's time input for n sequences at time t: sigma(t), or 0 without time conditioning."""
        t = as_time(t).to(device)
        sigma = self.schedule.sigma(t) if self.time_conditioned else torch.zeros_like(t)
        return sigma.float().expand(n) if sigma.dim() == 0 else sigma.float()

    def prior(self, n, length, device, generator=None):
        """z_1: all MASK (no draw: `generator` is for processes with a random prior)."""
        return torch.full((n, length), self.mask_id, dtype=torch.long, device=device)

    def forward_sample(self, x, t, u):
        """z_t ~ q(z_t | x) for hard tokens x, given mask uniforms u."""
        return forward_mask(x, self.alpha(t), u, self.mask_id)

    def forward_sample_soft(self, x_probs, t, generator=None):
        """z_t ~ q(z_t | x) for a soft x [N, L, V] (IDLM's student outputs)."""
        return forward_sample_soft(x_probs, self.alpha(t), self.mask_id, generator)

    def loss_positions(self, z_t):
        """Where the NELBO (and SDTT's divergence) has terms: the MASK positions of z_t."""
        return z_t == self.mask_id

    def denoise(self, model, z_t, t):
        """log x_theta(z_t, t) over the V+1 ids (SUBS)."""
        return subs_log_probs(model(z_t, self.noise_input(t, z_t.shape[0], z_t.device)), z_t, self.mask_id)

    def loss_log_outputs(self, model, z_t, t):
        """What `soft_loss` scores: log x_theta(z_t, t) over the V real tokens."""
        return self.denoise(model, z_t, t)[..., :self.vocab_size]

    def posterior(self, z_t, x_probs, s, t):
        """q(z_s | z_t, x), exactly (SDTT eq. 2), in float64."""
        return reverse_posterior(z_t, x_probs, self.alpha(s), self.alpha(t), self.mask_id)

    def reverse_step(self, logits, z_t, s, t, generator=None):
        """One ancestral step z_t -> z_s ~ p_theta(z_s | z_t) = q(z_s | z_t, x = x_theta(z_t))."""
        return reveal(logits, z_t, unmask_probability(self.alpha(s), self.alpha(t)), self.mask_id, generator)

    def reveal_positions(self, z_t, s, t, generator=None):
        """The positions that `reverse_step` reveals from t to s, drawn first (the same draws)."""
        return reveal_positions(z_t, unmask_probability(self.alpha(s), self.alpha(t)), self.mask_id, generator)

    def draw(self, rows, generator=None):
        """Tokens for revealed rows of x_theta's logits [M, V+1] (the same draws as `reverse_step`)."""
        return draw_tokens(rows, self.mask_id, generator)

    def final_tokens(self, rows, final, generator=None):
        """Tokens for rows of logits [M, V+1] still MASK after the last step: "argmax" (MDLM's noise
        removal) or "sample"."""
        return rows[:, :self.mask_id].argmax(-1) if final == "argmax" else self.draw(rows, generator)

    def final_positions(self, z):
        """The positions still MASK: the only ones the final pass decides (none: no final forward)."""
        return z == self.mask_id

    def final_step(self, logits, z, t, final, generator=None):
        """The final pass: positions still MASK take `final_tokens` of the logits at t_min."""
        rows = self.final_positions(z).nonzero(as_tuple=True)
        z = z.clone()
        z[rows] = self.final_tokens(logits[rows], final, generator)
        return z

    def loss(self, model, x, t, u):
        """Monte-Carlo estimate of the continuous-time NELBO (SDTT eq. 3), per token.

        x: clean tokens [N, L]; t: times [N] (antithetic, see `antithetic_times`);
        u: uniforms [N, L] that decide which positions are masked.
        """
        z_t = self.forward_sample(x, t, u)
        log_x = self.denoise(model, z_t, t)
        per_position = self.loss_weight(t)[:, None] * masked_nll(log_x, x, z_t, self.mask_id)
        return per_position.sum() / x.numel()

    def nelbo(self, model, x, t, u, scored=None):
        """The Monte-Carlo NELBO of `loss`, in nats summed over the batch, with the output layer run
        only at the MASK positions, the only ones with terms (`output_rows`): validation and the
        likelihood bounds. scored: bool [L] or [N, L]; positions outside it are never masked (the
        context the bound conditions on), so they carry no term (SPEC.md §7.3)."""
        if scored is not None:
            u = torch.where(scored, u, 1.0)  # a uniform of 1 is never below the move chance
        z_t = self.forward_sample(x, t, u)
        rows = self.loss_positions(z_t).nonzero(as_tuple=True)
        logits = output_rows(model, z_t, self.noise_input(t, x.shape[0], x.device), rows)
        log_x = subs_log_probs(logits, z_t[rows], self.mask_id)
        nll = -log_x.gather(-1, x[rows][:, None])[:, 0]
        return (self.loss_weight(t)[:, None].expand_as(x)[rows] * nll).sum()

    def loss_gap(self, log_teacher, log_fake, x_probs, z_t, t, shares=False):
        """soft_loss(teacher) - soft_loss(fake) on the same z_t as one sum (idlm.teacher_fake_gap,
        IDLM eq. 11), per token: w(t) sum over masked positions of <log f_fake - log f_teacher, x>."""
        gap = torch.where(self.loss_positions(z_t).unsqueeze(-1), log_teacher - log_fake, torch.zeros_like(log_fake))
        return per_token(-(self.loss_weight(t)[:, None] * (gap * x_probs).sum(-1)), shares)

    def soft_loss(self, log_f, x_probs, z_t, t, shares=False):
        """The NELBO with a soft target x [N, L, V]: w(t) sum over masked positions of -<log f, x>,
        per token (IDLM eqs. 10-11). log_f: [N, L, V] over the real tokens."""
        masked = self.loss_positions(z_t).unsqueeze(-1)
        cross = -(torch.where(masked, log_f, torch.zeros_like(log_f)) * x_probs).sum(-1)
        return per_token(self.loss_weight(t)[:, None] * cross, shares)

    def latent_log_prob(self, x_probs, z_t, t):
        """log q(z_t | x) of each sequence [N] for a soft x [N, L, V], the law of `forward_sample_soft`:
        log(1 - alpha_t) at MASK, log(alpha_t x[z]) at a token; differentiable in x (idlm.relaxed_gap)."""
        alpha = per_row(torch.as_tensor(self.alpha(t), dtype=torch.float64), z_t)
        masked = z_t == self.mask_id
        x_z = x_probs.gather(-1, z_t.clamp(max=self.vocab_size - 1).unsqueeze(-1)).squeeze(-1).double()
        x_z = torch.where(masked, 1.0, x_z)  # no log(0) at MASK, whose gradient would be 0 * inf
        return torch.where(masked, torch.log1p(-alpha), alpha.log() + x_z.log()).sum(-1)
