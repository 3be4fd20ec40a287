"""Duo (Sahoo et al. 2025): the Gaussian view of the uniform-state process, its curriculum
(soft-input) loss, and its Discrete Consistency Distillation (DCD), the teacher of IDLM-DCD.

Read alongside the IDLM paper section 2.1, eq. 22, and SPEC.md §4.4-4.6. A Gaussian latent

    w_t = at~ e_x + st~ eps,   eps ~ N(0, I_V),   at~^2 + st~^2 = 1,

has argmax(w_t) ~ q(. | x) of the uniform process (for a one-hot x) with

    alpha_t = T(at~) = (V P_V(at~/st~) - 1) / (V - 1),   P_V(m) = int phi(u - m) Phi(u)^(V-1) du,

P_V(m) being the chance that the clean coordinate is the largest. Duo writes at~^2 = sigmoid(-gamma),
st~^2 = sigmoid(gamma) (so m = exp(-gamma/2)) with gamma_t = g_min + t (g_max - g_min), and keeps T
as a table over gamma. The curriculum feeds the network softmax(w_t / tau) (the DiT's embedding
applies the softmax: it gets the logits w_t / tau) and evaluates the UDLM loss at z_t = argmax(w_t)
with alpha_t = T(gamma_t) and its t-derivative; L_Duo -> L_UDLM as tau -> 0+.
"""
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from diffusion import per_token
from processes.uniform import udlm_loss_gap, udlm_loss_tokens

GAMMA_RANGE = (-3.5, -1.75)   # Duo's ch-1 default window (OWT teacher: [-3.55, -1.85]; DCD: [-4, -1])


def gaussian_scales(gamma):
    """(at~, st~) of Duo's gamma: at~^2 = sigmoid(-gamma), st~^2 = sigmoid(gamma)."""
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


def argmax_probability(m, vocab, points=4001, width=12.0):
    """P_V(m) = int phi(u - m) Phi(u)^(V-1) du, float64, by the trapezoid rule on a uniform grid over
    [m - width, m + width] (the integrand is smooth and negligible at both ends, where the rule
    converges exponentially fast), with Phi^(V-1) as exp((V-1) log Phi) (V = 50258 underflows)."""
    m = np.atleast_1d(np.asarray(m, dtype=np.float64))[:, None]
    u = m + np.linspace(-width, width, points)[None]
    log_cdf = torch.special.log_ndtr(torch.from_numpy(u)).numpy()
    density = np.exp(-0.5 * (u - m) ** 2) / np.sqrt(2 * np.pi)
    return np.trapezoid(density * np.exp((vocab - 1) * log_cdf), u, axis=-1)


def alpha_of_scales(alpha_tilde, sigma_tilde, vocab):
    """T(at~) = (V P_V(at~/st~) - 1) / (V - 1), by quadrature."""
    m = np.asarray(alpha_tilde, dtype=np.float64) / np.asarray(sigma_tilde, dtype=np.float64)
    return (vocab * argmax_probability(m, vocab) - 1) / (vocab - 1)


@lru_cache(maxsize=8)
def alpha_table(vocab, g_min, g_max, points=1001):
    """T on a uniform grid of gammas over [g_min, g_max] (cached per vocabulary and window)."""
    gammas = np.linspace(g_min, g_max, points)
    return torch.from_numpy(gammas), torch.from_numpy(alpha_of_scales(*(s.numpy() for s in gaussian_scales(
        torch.from_numpy(gammas))), vocab))


def gamma_of_alpha(alpha, vocab):
    """The gamma whose Gaussian latent has alpha_t = T(at~(gamma)) = alpha at vocabulary V: the inverse
    of the table (T falls as gamma grows), over gamma in [-12, 12]."""
    gammas, alphas = alpha_table(vocab, -12.0, 12.0, 4001)
    return float(np.interp(alpha, alphas.numpy()[::-1], gammas.numpy()[::-1]))


class GaussianSchedule:
    """t -> gamma_t = g_min + t (g_max - g_min) -> alpha_t = T(at~(gamma_t)), from the cached table by
    linear interpolation; alpha'_t is the interpolant's slope (Duo's code: nearest of 1e5 points
    and a 1e-3 finite difference; SPEC.md §4.4)."""

    def __init__(self, vocab, g_min=GAMMA_RANGE[0], g_max=GAMMA_RANGE[1]):
        self.vocab, self.g_min, self.g_max = vocab, g_min, g_max
        self.gammas, self.alphas = alpha_table(vocab, g_min, g_max)

    def gamma(self, t):
        return self.g_min + torch.as_tensor(t, dtype=torch.float64) * (self.g_max - self.g_min)

    def alpha_and_slope(self, t):
        """(alpha_t, d alpha_t / dt), float64, for times t in [0, 1] (any shape)."""
        position = (torch.as_tensor(t, dtype=torch.float64).clamp(0, 1) * (len(self.gammas) - 1))
        left = position.floor().long().clamp(max=len(self.gammas) - 2)
        fraction = position - left
        a0, a1 = self.alphas.to(position.device)[left], self.alphas.to(position.device)[left + 1]
        return a0 + fraction * (a1 - a0), (a1 - a0) * (len(self.gammas) - 1)

    def latent(self, x_probs, t, noise):
        """w_t = at~ x + st~ eps for x [N, L, V] (one-hot data or a soft student output) and times t [N]."""
        alpha_tilde, sigma_tilde = gaussian_scales(self.gamma(t))
        shape = (-1,) + (1,) * (x_probs.dim() - 1)
        return (alpha_tilde.reshape(shape).to(x_probs) * x_probs + sigma_tilde.reshape(shape).to(x_probs) * noise)


def sigma_input(alpha):
    """The network's time input -log alpha_t (Duo's `_sigma_from_alphat`), float32."""
    return (-torch.log(alpha)).float()


class Curriculum:
    """The uniform process seen through Duo's Gaussian latent at temperature tau: its noisy state is
    w_t = at~ x + st~ eps (float [N, L, V], `schedule.latent`), the networks see w_t / tau at
    sigma = -log T(gamma_t), and the UDLM loss is scored at z_t = argmax(w_t) with alpha_t = T(gamma_t)
    and the table's slope. Its `loss` is Duo's curriculum (pretraining, SPEC.md §4.4); with `--distill idlm
    --tau` its forward_sample(_soft), denoise, loss_log_outputs, soft_loss and loss_gap are IDLM-code's
    Gaussian-argmax IDLM-Duo (SPEC.md §6.4), whose loss latent keeps the student's gradient.

    INEXACT for a soft x (SPEC.md §4.4, §6.4): argmax(at~ x + st~ eps) does not follow
    Cat(T x + (1 - T)/V) unless x is one-hot, so Theorem 3.1's relaxation (c) does not hold for it.
    The exact relaxation (the plain UniformProcess) stays the default. The rest (sampling, validation,
    what a checkpoint records) is the process's own: sample with `.process`, not with this value.
    """

    latent_log_prob = None  # w_t is reparameterised (at~ x + st~ eps): x's gradient flows through w_t itself

    def __init__(self, process, tau, schedule=None):
        self.process, self.tau = process, tau
        self.vocab_size = process.vocab_size
        self.schedule = schedule or GaussianSchedule(process.vocab_size)

    def forward_sample(self, x, t, u=None):
        """w_t from clean tokens x (fresh Gaussian noise; the uniforms u of the discrete process are unused)."""
        return self.forward_sample_soft(F.one_hot(x, self.vocab_size).float(), t)

    def forward_sample_soft(self, x_probs, t):
        """w_t = at~ x + st~ eps for a soft x [N, L, V]; differentiable in x (IDLM eq. 22: "x0 with grad")."""
        return self.schedule.latent(x_probs, t, torch.randn_like(x_probs))

    def alpha_and_slope(self, t, device):
        alpha, slope = self.schedule.alpha_and_slope(t)
        return alpha.to(device), slope.to(device)

    def denoise(self, model, w, t):
        """log x_theta over the V states from the soft input w / tau at sigma = -log T(gamma_t)."""
        alpha, _ = self.alpha_and_slope(t, w.device)
        return self.process.log_probs(model(w / self.tau, sigma_input(alpha)))

    def loss_log_outputs(self, model, w, t):
        return self.denoise(model, w, t)

    def soft_loss(self, log_f, x_probs, w, t, shares=False):
        """The UDLM loss (soft x, j over the whole vocabulary) at z_t = argmax(w_t), per token."""
        return self.process.soft_loss(log_f, x_probs, w.argmax(-1), t, shares, *self.alpha_and_slope(t, w.device))

    def loss_gap(self, log_teacher, log_fake, x_probs, w, t, shares=False):
        """soft_loss(teacher) - soft_loss(fake) at z_t = argmax(w_t), one sum, per token. The gradient
        w.r.t. x flows through the explicit xbar terms and, when the log-outputs were computed from w
        with grad, through the networks' soft inputs w_t / tau (SPEC.md §6.4)."""
        gap = udlm_loss_gap(log_teacher, log_fake, x_probs, w.argmax(-1), *self.alpha_and_slope(t, w.device))
        return per_token(gap, shares)

    def loss(self, model, x, t, u):
        """Duo's curriculum loss (SPEC.md §4.4), per token: the UDLM loss of the network fed w_t / tau, for
        the one-hot data x in closed form (`udlm_loss_tokens`)."""
        w = self.forward_sample(x, t, u)
        z_t = w.argmax(-1)
        return udlm_loss_tokens(self.denoise(model, w, t), x, z_t, *self.alpha_and_slope(t, w.device)).mean().float()


# ----------------------------------------------------------------------------- DCD (SPEC.md §4.6)
# Duo Algorithm 1 as its code runs it (Duo-code `Distillation.nll`, `scripts/distil_owt.sh`; the paper's
# own text is UNCONFIRMED here). For data x0, a time t and a gap dt:
#
#     s = t - dt,  one shared eps:  w_t = at~_t e_x0 + st~_t eps,  w_s = at~_s e_x0 + st~_s eps,
#
# the deterministic (PF-ODE / DDIM) coupling of the two Gaussian latents through the *data*. The student
# sees argmax(w_t) at sigma_t, a frozen copy of it (the teacher of the round) sees argmax(w_s) at sigma_s,
# both with discrete inputs, and the student minimises KL(student || teacher) per position ("kl-bwd").
# Each round the student is copied into the teacher and dt doubles: dt = 2^round / T_d (Duo: T_d = 512,
# 5 rounds of 10k steps, gamma in [-4, -1]). The loop and its rounds live in dcd.py.

DCD_GAMMA_RANGE = (-4.0, -1.0)


def round_gap(round_index, base_steps):
    """dt of a round: 2^round / T_d."""
    return 2 ** round_index / base_steps


def coupled_times(t, dt):
    """(t, s = t - dt) with t moved up to [dt, 1] (Duo-code: t <- clip(t + dt))."""
    t = (t.double() + dt).clamp(max=1.0)
    return t, (t - dt).clamp(min=0.0)


def dcd_loss(student, teacher, process, schedule, x, t, dt):
    """KL(student(argmax w_t, sigma_t) || teacher(argmax w_s, sigma_s)) per position, mean (SPEC.md §4.6)."""
    t, s = coupled_times(t, dt)
    onehot = F.one_hot(x, process.vocab_size).float()
    noise = torch.randn_like(onehot)
    w_t, w_s = (schedule.latent(onehot, time, noise) for time in (t, s))
    alpha_t, _ = schedule.alpha_and_slope(t)
    alpha_s, _ = schedule.alpha_and_slope(s)
    log_student = process.log_probs(student(w_t.argmax(-1), sigma_input(alpha_t).to(x.device)))
    with torch.no_grad():
        log_teacher = process.log_probs(teacher(w_s.argmax(-1), sigma_input(alpha_s).to(x.device)))
    return (log_student.exp() * (log_student - log_teacher)).sum(-1).mean()
