"""SEDD on the absorbing graph (Lou et al. 2024): the masking process of diffusion.py, learned
through *concrete scores* with the score-entropy loss instead of a denoiser with the NELBO.

Read alongside the IDLM paper, eq. 3 and App. D (Prop. D.2), and SPEC.md §5.
- The forward process is MDLM's (tokens turn into MASK, id V), so `SeddProcess` is a
  `MaskingProcess`: forward draws, reveal draws and the exact posterior are the same.
- The network is time-conditioned on sigma(t) = -log alpha_t and its output is turned into
  log-scores log s_y ~ log p_t(z^{i<-y}) / p_t(z): raw - log expm1(sigma) - log V, with the entry
  at the input token set to 0 (`log_scores`). At a MASK position the true score is
  s_y = r_t x_hat_y, r_t = 1 / expm1(sigma) = alpha_t / (1 - alpha_t).
- The loss is score entropy (`score_entropy`), positive form, on masked positions only.
  For s = r_t f with f on the simplex it equals the MDLM loss of f (IDLM Prop. D.2).
- `denoise` gives what the generic code needs: the scores normalised over the real tokens
  (the sigma shift cancels), with carry-over at unmasked inputs. That is MDLM's SUBS applied
  to the raw output, so ancestral sampling, SDTT and IDLM's student map work unchanged.
  The raw scores stay available through `scores`, for SEDD's own samplers (samplers.ScoreSampler).
"""
import math

import torch
import torch.nn.functional as F

from diffusion import MaskingProcess, as_time, per_row, per_token


def log_expm1(sigma):
    """log(e^sigma - 1), without the cancellation of exp(sigma) - 1 near 0."""
    return torch.expm1(sigma).log()


def log_scores(raw, z_t, sigma, mask_id):
    """log s_theta(z_t, sigma) over the V+1 ids from the network's raw output [N, L, V+1]
    (SEDD's scale_by_sigma): raw - log expm1(sigma) - log V, and 0 at the input token (the
    score of staying, also MASK -> MASK). Computed in float32 at least; sigma: [N]."""
    raw = raw.float() if raw.dtype in (torch.float16, torch.bfloat16) else raw
    shift = log_expm1(sigma.to(raw.dtype)).reshape(-1, *([1] * (raw.dim() - 1))) + math.log(mask_id)
    return (raw - shift).scatter(-1, z_t.unsqueeze(-1), 0.0)


def score_entropy(log_s, x_probs, z_t, mask_id, log_r, sigma_prime):
    """Score entropy (IDLM eq. 3; SPEC.md §5.2), positive form, per position [N, L]:

        sigma'(t) [ sum_y s_y - r_t sum_y x_y log s_y + sum_y K(r_t x_y) ],  K(a) = a (log a - 1),

    at MASK positions of z_t and 0 elsewhere. log_s: [N, L, >= V] log-scores (only the real
    tokens are used); x_probs: [N, L, V], one-hot or soft; log_r, sigma_prime: [N].
    Written term by term as r x_y (e^d - 1 - d), d = log s_y - log(r x_y), where x_y > 0 and
    s_y where x_y = 0: each term is >= 0 and the large r_t terms never cancel.
    """
    log_s = log_s[..., :mask_id]
    present = x_probs > 0
    log_rx = per_row(log_r, log_s).to(log_s.dtype) + torch.where(present, x_probs, torch.ones_like(x_probs)).log()
    d = torch.where(present, log_s - log_rx, torch.zeros_like(log_s))
    terms = torch.where(present, log_rx.exp() * (torch.expm1(d) - d), log_s.exp())
    per_position = per_row(sigma_prime, log_s).to(log_s.dtype)[..., 0] * terms.sum(-1)
    return torch.where(z_t == mask_id, per_position, torch.zeros_like(per_position))


class SeddProcess(MaskingProcess):
    """The absorbing process learned with concrete scores (SEDD). Always time-conditioned: the
    scores depend on t through r_t, and the network sees sigma(t)."""
    name = "sedd"
    default_sampler = "analytic"  # SEDD's own (Tweedie tau-leaping on the scores)
    has_scores = True
    loss_gap = None  # IDLM's gap is the difference of two score entropies (idlm.teacher_fake_gap)

    def __init__(self, vocab_size, schedule=None, time_conditioned=True):
        if not time_conditioned:
            raise ValueError("SEDD needs a time-conditioned network (its scores depend on t through r_t)")
        super().__init__(vocab_size, schedule, time_conditioned=True)

    def log_r(self, t):
        """log r_t = log alpha_t - log(1 - alpha_t) = -log expm1(sigma(t))."""
        return -log_expm1(self.schedule.sigma(as_time(t)))

    def sigma_prime(self, t):
        """sigma'(t) = -alpha'_t / alpha_t, the rate at which a clean token turns into MASK."""
        t = as_time(t)
        return -self.schedule.alpha_prime(t) / self.schedule.alpha(t)

    def log_scores(self, raw, z_t, t):
        """Log-scores over V+1 ids from raw network output at time t (a number or [N])."""
        sigma = self.schedule.sigma(as_time(t).to(raw.device)).double().expand(z_t.shape[0])
        return log_scores(raw, z_t, sigma, self.mask_id)

    def scores(self, model, z_t, t):
        """log s_theta(z_t, t) over the V+1 ids."""
        return self.log_scores(model(z_t, self.noise_input(t, z_t.shape[0], z_t.device)), z_t, t)

    def loss_log_outputs(self, model, z_t, t):
        """What `soft_loss` scores: the log-scores over the V real tokens."""
        return self.scores(model, z_t, t)[..., :self.vocab_size]

    def loss(self, model, x, t, u):
        """Monte-Carlo score entropy per token (SPEC.md §5.2), x: clean tokens [N, L]."""
        z_t = self.forward_sample(x, t, u)
        x_probs = F.one_hot(x, self.vocab_size).float()
        return self.soft_loss(self.loss_log_outputs(model, z_t, t), x_probs, z_t, t)

    def nelbo(self, model, x, t, u, scored=None):
        """The score entropy, SEDD's bound on -log p, in nats summed over the batch; positions
        outside `scored` (bool [L] or [N, L]) are never masked, so they carry no term."""
        if scored is not None:
            u = torch.where(scored, u, 1.0)  # a uniform of 1 is never below the move chance
        return self.loss(model, x, t, u) * x.numel()

    def soft_loss(self, log_f, x_probs, z_t, t, shares=False):
        """Score entropy with a soft target x [N, L, V], per token; log_f: log-scores [N, L, V]
        (IDLM eq. 10 for a SEDD fake). Where log_f = log(r_t f), f on the simplex, this is
        MDLM's `soft_loss` of f (IDLM Prop. D.2)."""
        t = as_time(t).to(z_t.device)
        per_position = score_entropy(log_f, x_probs, z_t, self.mask_id, self.log_r(t), self.sigma_prime(t))
        return per_token(per_position, shares)
