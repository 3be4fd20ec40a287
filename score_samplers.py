"""Samplers that use concrete scores (SEDD; SPEC-teachers A2.3), with the interface of samplers.py:

    tokens, forwards = sampler(model, process, z, steps, generator=None, on_step=None)

On the grid linspace(1, T_MIN, K+1), a step from t to s moves a MASK position to token y with
probability P(y) and leaves it MASK with 1 - sum_y P(y); real tokens never change.
- "analytic" (Tweedie tau-leaping, the sampler behind SEDD's numbers): P(y) = expm1(dsig) s_y,
  dsig = sigma(t) - sigma(s). With normalised scores s = r_t x_hat this is exactly the
  ancestral step (alpha_s - alpha_t) / (1 - alpha_t) x_hat_y.
- "euler": P(y) = (t - s) sigma'(t) s_y, a first-order step (poor on coarse grids).
Unnormalised scores can give sum_y P(y) > 1, a negative stay probability: it is clamped to 0 and
the rest renormalised (A5.10). A step is drawn in two stages that factor it exactly, as
diffusion.reveal does: which MASK positions move (one float64 uniform each), then their tokens
(float64 inverse CDF over the real tokens, proportional to s_y). The last pass, at T_MIN, fills
what is still MASK with y ~ s_y (SEDD's denoiser step: drawn, not argmax). K steps + 1 forwards.
"""
import torch

from diffusion import T_MIN, draw_tokens, generator_device, time_grid


def move_probability(log_s, rate):
    """1 - P(stay) = rate * sum_y s_y over the real tokens, clamped to [0, 1]: [N, L] in float64.
    rate: [N] or a number, expm1(dsig) (analytic) or dt sigma'(t) (Euler)."""
    total = log_s.double().logsumexp(-1).exp()
    rate = torch.as_tensor(rate, dtype=torch.float64, device=log_s.device).reshape(-1, 1)
    return (rate * total).clamp(0, 1)


def score_step(log_s, z_t, rate, mask_id, generator=None):
    """One step z_t -> z_s from log-scores log_s [N, L, >= V] at MASK positions."""
    p_move = move_probability(log_s[..., :mask_id], rate)
    u = torch.rand(z_t.shape, dtype=torch.float64, generator=generator,
                   device=generator_device(generator, z_t)).to(z_t.device)
    moved = (z_t == mask_id) & (u < p_move)
    z_s = z_t.clone()
    z_s[moved] = draw_tokens(log_s[moved], mask_id, generator)
    return z_s


def analytic_rate(process, s, t):
    """expm1(sigma(t) - sigma(s))."""
    return torch.expm1(process.schedule.sigma(t) - process.schedule.sigma(s))


def euler_rate(process, s, t):
    """(t - s) sigma'(t)."""
    return (t - s) * process.sigma_prime(t)


class ScoreSampler:
    """K steps of `rate` ("analytic" or "euler") from the network's scores, then the final fill."""
    extends_context = False
    RATES = {"analytic": analytic_rate, "euler": euler_rate}

    def __init__(self, rule="analytic", t_min=T_MIN):
        self.rule, self.rate, self.t_min = rule, self.RATES[rule], t_min

    @torch.no_grad()
    def __call__(self, model, process, z, steps, generator=None, on_step=None):
        if not hasattr(process, "scores"):
            raise ValueError(f"sampler {self.rule!r} needs a score model (SEDD, train.py --model sedd); "
                             f"this model's process is {process.kind!r}: use --sampler ancestral")
        times, forwards = time_grid(steps, self.t_min), 0
        for i in range(steps + 1):
            masked = z == process.mask_id
            if i == steps and not masked.any():
                break
            log_s = process.scores(model, z, times[i])
            forwards += z.shape[0]
            if i == steps:
                z = z.clone()
                z[masked] = draw_tokens(log_s[masked], process.mask_id, generator)
                break
            z = score_step(log_s, z, self.rate(process, times[i + 1], times[i]), process.mask_id, generator)
            if on_step is not None:
                on_step(i, z)
        return z, forwards
