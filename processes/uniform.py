"""The uniform-state process of UDLM and Duo, as a value beside diffusion.MaskingProcess.

Read alongside the IDLM paper, eqs. 17-22 and 5, and SPEC.md §4. There is no MASK: a token
at time t is still clean with probability alpha_t, else it is resampled uniformly from all V
states (for GPT-2 Duo, V = 50258 includes [PAD]). So z_1 ~ Uniform(V)^L, every position may
change at every reverse step, and the denoiser's output is a log-softmax over V (no SUBS).

Per position, for a one-hot or soft x (the map is linear in x):

    q(z_t | x) = xbar(x) / V,    xbar(x) = V alpha_t x + (1 - alpha_t) 1.

The network is time-conditioned on sigma = -log alpha_t (Duo). The schedule is the log-linear
alpha_t of diffusion.py; Duo's Gaussian view of the same process is in processes/duo.py.
"""
import math

import torch
import torch.nn.functional as F

from diffusion import LogLinear, as_time, generator_device, per_row, per_token, sample_categorical


# ----------------------------------------------------------------------------- the math

def uniform_marginal(x_probs, alpha_t):
    """q(z_t | x) = alpha_t x + (1 - alpha_t)/V per position, for x [N, L, V] (one-hot or soft)."""
    alpha = per_row(alpha_t, x_probs).to(x_probs.dtype)
    return alpha * x_probs + (1 - alpha) / x_probs.shape[-1]


def forward_uniform(x, alpha_t, u, states):
    """z_t ~ q(z_t | x) for hard tokens x, given uniforms u of x's shape.

    A position is resampled when u < 1 - alpha_t; conditioned on that, u / (1 - alpha_t) is
    itself uniform on [0, 1) and picks the new state. One uniform per position keeps this pure.
    """
    move = 1 - per_row(alpha_t, x).to(u.dtype)
    new_state = (u / move * states).long().clamp_(max=states - 1)
    return torch.where(u < move, new_state, x)


def uniform_posterior(z_t, x_probs, alpha_s, alpha_t):
    """q(z_s = j | z_t = i, x) of SPEC.md §4.2 (Duo's `_posterior_from_x0`), in float64:

        [V a_t x_j d_ij + (a_ts - a_t) d_ij + (a_s - a_t) x_j + (1 - a_ts)(1 - a_s)/V] / [V a_t x_i + 1 - a_t]

    with a_ts = a_t / a_s. x_probs [N, L, V] (one-hot or soft); returns [N, L, V]. At a_s = 1
    (the end of the chain) this is the "ancestral removal" step.
    """
    x = x_probs.double()
    V = x.shape[-1]
    a_s, a_t = (per_row(torch.as_tensor(a, dtype=torch.float64), z_t)[..., None] for a in (alpha_s, alpha_t))
    a_ts = a_t / a_s
    stay = F.one_hot(z_t, V).double()
    x_i = x.gather(-1, z_t.unsqueeze(-1))
    numerator = V * a_t * x * stay + (a_ts - a_t) * stay + (a_s - a_t) * x + (1 - a_ts) * (1 - a_s) / V
    return numerator / (V * a_t * x_i + 1 - a_t)


def draw_posterior(z_t, logits, alpha_s, alpha_t, generator=None):
    """z_s ~ q(z_s | z_t, x = softmax(logits)) of uniform_posterior, drawn as the three-way mixture
    its numerator is: stay at i = z_t (weight V a_t x_i + a_ts - a_t), a draw from x (a_s - a_t) or a
    uniform state ((1 - a_ts)(1 - a_s)), over their sum V a_t x_i + 1 - a_t. The same law, but only
    the positions that draw from x touch the vocabulary: no float64 [N, L, V] posterior, which at
    Duo's V = 50258 and L = 1024 is 412 MB per sequence. Draws in float64 (inverse CDF for x).
    logits [N, L, V] (only the V states); z_t [N, L]; alpha_s, alpha_t: scalars or [N]."""
    V = logits.shape[-1]
    a_s, a_t = (per_row(torch.as_tensor(a, dtype=torch.float64), z_t) for a in (alpha_s, alpha_t))
    a_ts = a_t / a_s
    x_i = (logits.gather(-1, z_t.unsqueeze(-1)).squeeze(-1).double() - logits.float().logsumexp(-1).double()).exp()
    stay, from_x, uniform = V * a_t * x_i + a_ts - a_t, a_s - a_t, (1 - a_ts) * (1 - a_s)
    u = torch.rand(z_t.shape, dtype=torch.float64, generator=generator,
                   device=generator_device(generator, z_t)).to(z_t.device) * (stay + from_x + uniform)
    z_s = z_t.clone()
    pick_uniform = u >= stay + from_x  # then (u - stay - from_x) / uniform is itself uniform on [0, 1)
    state = ((u - stay - from_x) / uniform * V).long().clamp_(0, V - 1)
    z_s[pick_uniform] = state[pick_uniform]
    pick_x = (u >= stay) & ~pick_uniform
    if pick_x.any():
        z_s[pick_x] = sample_categorical(logits[pick_x].double().softmax(-1), generator)
    return z_s


def log_xbar_model(log_f, a):
    """log(V a f_j + 1 - a) from log f, in log_f's dtype (a: [N, 1, 1] float64)."""
    a = a.to(log_f.dtype)
    return torch.logaddexp(log_f + (log_f.shape[-1] * a).log(), (1 - a).log())


def udlm_loss(log_f, x_probs, z_t, alpha_t, alpha_prime_t):
    """The continuous-time UDLM NELBO integrand per position, in its positive form (SPEC.md §4.3):

        (-alpha'_t / (V alpha_t)) sum_j [ sh_j - s_j log sh_j + s_j (log s_j - 1) ]  >= 0,

    s_j = xbar_j / xbar_i (the true ratios, xbar = V alpha x + 1 - alpha, x = x_probs), sh_j the
    same with m = V alpha f + 1 - alpha for x_theta = f = exp(log_f), i = z_t at the position. The
    j = i term is zero, so the sum runs over the whole vocabulary: the soft-x form IDLM needs (Duo's
    closed form assumes a one-hot x). IDLM eq. 5 writes the same with a "positive" lambda_t and a
    non-positive bracket; the sign here makes it >= 0.

    Computed in closed form: with M = sum_j m_j, X = sum_j xbar_j and r = m_i / xbar_i the bracket is

        M / m_i + (X (log r - 1) + D) / xbar_i,    D = sum_j xbar_j log(xbar_j / m_j).

    On the simplex M = X = V, and it is [V (1/r + log r - 1) + V KL(xbar/V || m/V)] / xbar_i, two
    non-negative terms (no cancellation, though the ratios reach V alpha / (1 - alpha) near t = 0);
    M and X are summed rather than set to V so that the function, and so its gradient, is the
    literal sum's off the simplex too. The sums over the vocabulary take their terms in the
    inputs' dtype (float32 in training) and add them in float64. The literal sum is
    tests/test_uniform.py's reference.
    log_f, x_probs: [N, L, V]; z_t: [N, L]; alpha_t, alpha_prime_t: scalars or [N]. Returns [N, L].
    """
    V, index = log_f.shape[-1], z_t.unsqueeze(-1)
    a = per_row(torch.as_tensor(alpha_t, dtype=torch.float64), z_t)[..., None]
    log_m = log_xbar_model(log_f, a)
    xbar = V * a.to(log_m.dtype) * x_probs.to(log_m.dtype) + (1 - a.to(log_m.dtype))
    D = (torch.xlogy(xbar, xbar) - xbar * log_m).sum(-1, dtype=torch.float64)
    M, X = log_m.exp().sum(-1, dtype=torch.float64), xbar.sum(-1, dtype=torch.float64)
    xbar_i, log_m_i = xbar.gather(-1, index).squeeze(-1).double(), log_m.gather(-1, index).squeeze(-1).double()
    bracket = M * (-log_m_i).exp() + (X * (log_m_i - xbar_i.log() - 1) + D) / xbar_i
    rate = -per_row(torch.as_tensor(alpha_prime_t, dtype=torch.float64), z_t) / (V * a[..., 0])
    return rate * bracket


def udlm_loss_tokens(log_f, x, z_t, alpha_t, alpha_prime_t):
    """udlm_loss for a one-hot x given as tokens x [N, L] (pretraining, validation), in closed form.

    With k = x, i = z_t, xbar_i = V alpha [i = k] + 1 - alpha, m_j = V alpha f_j + 1 - alpha and
    S = sum_j log m_j, the bracket of udlm_loss is

        V / m_i - ((1 - alpha) S + V alpha log m_k) / xbar_i + (V / xbar_i) log m_i + sum_j s_j (log s_j - 1),

    the last sum taking two values of s. The only [N, L, V] work is S, summed in float64 from the
    logs in log_f's dtype: no float64 tensor over the vocabulary, which at V = 50258 is what keeps
    a Duo teacher's batch in memory (and the embedded default about as fast as MDLM)."""
    V = log_f.shape[-1]
    a = per_row(torch.as_tensor(alpha_t, dtype=torch.float64), z_t)
    a_in = a[..., None].to(log_f.dtype)
    log_m = torch.logaddexp(log_f + (V * a_in).log(), (1 - a_in).log())
    S = log_m.sum(-1, dtype=torch.float64)
    log_m_k, log_m_i = (log_m.gather(-1, index.unsqueeze(-1)).squeeze(-1).double() for index in (x, z_t))
    xbar_i = torch.where(z_t == x, V * a + 1 - a, 1 - a)
    s_other, s_k = (1 - a) / xbar_i, (V * a + 1 - a) / xbar_i
    constant = (V - 1) * (torch.xlogy(s_other, s_other) - s_other) + torch.xlogy(s_k, s_k) - s_k
    bracket = V * (-log_m_i).exp() - ((1 - a) * S + V * a * log_m_k) / xbar_i + V * log_m_i / xbar_i + constant
    rate = -per_row(torch.as_tensor(alpha_prime_t, dtype=torch.float64), z_t) / (V * a)
    return rate * bracket


def udlm_loss_gap(log_teacher, log_fake, x_probs, z_t, alpha_t, alpha_prime_t):
    """udlm_loss(teacher) - udlm_loss(fake) per position, as one sum (IDLM eq. 11 for Duo): with m^T,
    m^F the teacher's and the fake's m of udlm_loss, the xbar log xbar terms cancel and the bracket is

        M^T / m^T_i - M^F / m^F_i + [ X (log m^T_i - log m^F_i) + sum_j xbar_j (log m^F_j - log m^T_j) ] / xbar_i.

    Its gradient w.r.t. x (the student's output) comes only through xbar (the "explicit xbar
    terms"); the networks' outputs are constants here. One sum over the vocabulary, as in udlm_loss."""
    V, index = log_teacher.shape[-1], z_t.unsqueeze(-1)
    a = per_row(torch.as_tensor(alpha_t, dtype=torch.float64), z_t)[..., None]
    log_m_teacher, log_m_fake = log_xbar_model(log_teacher, a), log_xbar_model(log_fake, a)
    dtype = log_m_teacher.dtype
    xbar = V * a.to(dtype) * x_probs.to(dtype) + (1 - a.to(dtype))
    cross = (xbar * (log_m_fake - log_m_teacher)).sum(-1, dtype=torch.float64)
    X, xbar_i = xbar.sum(-1, dtype=torch.float64), xbar.gather(-1, index).squeeze(-1).double()
    teacher_i, fake_i = (m.gather(-1, index).squeeze(-1).double() for m in (log_m_teacher, log_m_fake))
    M_teacher, M_fake = (m.exp().sum(-1, dtype=torch.float64) for m in (log_m_teacher, log_m_fake))
    bracket = M_teacher * (-teacher_i).exp() - M_fake * (-fake_i).exp() + (X * (teacher_i - fake_i) + cross) / xbar_i
    rate = -per_row(torch.as_tensor(alpha_prime_t, dtype=torch.float64), z_t) / (V * a[..., 0])
    return rate * bracket


# ----------------------------------------------------------------------------- the process, as a value

class UniformProcess:
    """Uniform-state diffusion (UDLM / Duo) under a schedule, with the `diffusion.Process`
    interface. vocab_size: the model's tokens, the ids a tokenizer decodes (`tokens`); states: the
    number of states V of the noise (default: vocab_size; Duo's GPT-2 models have one more, [PAD],
    which the DiT's extra row already provides). A sample's last pass never picks a state beyond the
    tokens: [PAD] is noise, never text.

    There is no MASK (`has_mask` is False, `mask_id` None): every position may change at every
    step, so no token can be held fixed (`takes_prompt` is False) and the reveal-based samplers
    do not apply. The network is always time-conditioned: it sees sigma = -log alpha_t.
    """
    name = family = "uniform"
    mask_id = None
    default_sampler = "ancestral"  # the MASK-based samplers do not apply
    has_mask = takes_prompt = has_scores = False

    def __init__(self, vocab_size, schedule=None, time_conditioned=True, states=None):
        if not time_conditioned:
            raise ValueError("the uniform-state process needs a time-conditioned network (it sees -log alpha_t)")
        self.vocab_size, self.tokens = states or vocab_size, vocab_size
        self.schedule = schedule if schedule is not None else LogLinear()
        self.time_conditioned = True

    def config(self):
        """What a checkpoint records to rebuild this process (processes.registry.process_from_config)."""
        return {"kind": self.name, "schedule": type(self.schedule).__name__.lower(), "eps": self.schedule.eps,
                "states": self.vocab_size}

    def alpha(self, t):
        return self.schedule.alpha(t)

    def alpha_prime(self, t):
        return self.schedule.alpha_prime(t)

    def loss_weight(self, t):
        """-alpha'_t / (V alpha_t): the rate of the uniform jumps (IDLM eq. 20), UDLM's weight."""
        return -self.alpha_prime(t) / (self.vocab_size * self.alpha(t))

    def noise_input(self, t, n, device):
        """sigma = -log alpha_t for n sequences (Duo's `_sigma_from_alphat`)."""
        sigma = self.schedule.sigma(as_time(t).to(device))
        return sigma.float().expand(n) if sigma.dim() == 0 else sigma.float()

    def prior(self, n, length, device, generator=None):
        """z_1 ~ Uniform(V)^L (with alpha_1 = eps > 0 this is the NELBO's prior, not q(z_1|x))."""
        return torch.randint(self.vocab_size, (n, length), generator=generator,
                             device=generator_device(generator, torch.empty(0, device=device))).to(device)

    def forward_sample(self, x, t, u):
        """z_t ~ q(z_t | x) for hard tokens x, given uniforms u of x's shape."""
        return forward_uniform(x, self.alpha(t), u, self.vocab_size)

    def forward_sample_soft(self, x_probs, t, generator=None):
        """z_t ~ Cat(alpha_t x + (1 - alpha_t)/V) for a soft x [N, L, V], in float64."""
        return sample_categorical(uniform_marginal(x_probs.double(), self.alpha(t)), generator)

    def loss_positions(self, z_t):
        """Every position carries a loss term (and every position may change)."""
        return torch.ones_like(z_t, dtype=torch.bool)

    def log_probs(self, logits):
        """log x_theta over the V states from the network's logits (no SUBS, float32)."""
        return logits[..., :self.vocab_size].float().log_softmax(-1)

    def denoise(self, model, z_t, t):
        """log x_theta(z_t, t) [N, L, V]. z_t: tokens [N, L], or float logits [N, L, V] (Duo's
        soft input w / tau, which the DiT's embedding turns into softmax(w / tau) @ E)."""
        return self.log_probs(model(z_t, self.noise_input(t, z_t.shape[0], z_t.device)))

    def loss_log_outputs(self, model, z_t, t):
        """What `soft_loss` scores: log x_theta(z_t, t) over the V states."""
        return self.denoise(model, z_t, t)

    def posterior(self, z_t, x_probs, s, t):
        """q(z_s | z_t, x), exactly (SPEC.md §4.2), in float64, over the V states."""
        return uniform_posterior(z_t, x_probs[..., :self.vocab_size], self.alpha(s), self.alpha(t))

    def reverse_step(self, logits, z_t, s, t, generator=None):
        """One ancestral step z_t -> z_s ~ q(z_s | z_t, x = x_theta(z_t)) ("mean" parameterization,
        Duo's plug-in sampler), at every position, drawn in float64 as `draw_posterior`'s mixture."""
        return draw_posterior(z_t, logits[..., :self.vocab_size], self.alpha(s), self.alpha(t), generator)

    def final_positions(self, z):
        """Every position: the final pass decides them all."""
        return torch.ones_like(z, dtype=torch.bool)

    def final_step(self, logits, z, t, final=None, generator=None):
        """Duo's ancestral removal: z_0 ~ q(z_0 | z_t, x_theta) at alpha_0 = 1, with x_theta put on the
        tokens alone (no mass on states a tokenizer cannot decode, such as Duo's [PAD]). `final` is
        the absorbing process's choice of fill; this pass has none."""
        logits = logits[..., :self.vocab_size].clone()
        logits[..., self.tokens:] = -math.inf
        return draw_posterior(z, logits, 1.0, self.alpha(t), generator)

    def soft_loss(self, log_f, x_probs, z_t, t, shares=False, alpha_t=None, alpha_prime_t=None):
        """The UDLM loss with a soft target x [N, L, V], the j-sum over the whole vocabulary, per
        token. alpha_t, alpha_prime_t: Duo's Gaussian-mapped values, when not the schedule's."""
        alpha_t = self.alpha(t) if alpha_t is None else alpha_t
        alpha_prime_t = self.alpha_prime(t) if alpha_prime_t is None else alpha_prime_t
        return per_token(udlm_loss(log_f, x_probs, z_t, alpha_t, alpha_prime_t), shares)

    def loss_gap(self, log_teacher, log_fake, x_probs, z_t, t, shares=False):
        """soft_loss(teacher) - soft_loss(fake) on the same z_t as one sum (`udlm_loss_gap`;
        idlm.teacher_fake_gap, IDLM eq. 11), per token."""
        return per_token(udlm_loss_gap(log_teacher, log_fake, x_probs, z_t, self.alpha(t), self.alpha_prime(t)), shares)

    def latent_log_prob(self, x_probs, z_t, t):
        """log q(z_t | x) of each sequence [N] for a soft x [N, L, V]: the sum over positions of
        log(alpha_t x[z] + (1 - alpha_t)/V), the law `forward_sample_soft` draws. Differentiable in x:
        the score-function term of IDLM's exact gradient (idlm.relaxed_gap)."""
        alpha = per_row(torch.as_tensor(self.alpha(t), dtype=torch.float64), z_t)
        x_z = x_probs.gather(-1, z_t.unsqueeze(-1)).squeeze(-1).double()
        return (alpha * x_z + (1 - alpha) / self.vocab_size).log().sum(-1)

    def loss(self, model, x, t, u):
        """Monte-Carlo estimate of the continuous-time UDLM NELBO (SPEC.md §4.3), per token (float64
        sum, returned in float32 for the optimizer)."""
        z_t = self.forward_sample(x, t, u)
        log_x = self.denoise(model, z_t, t)
        loss = udlm_loss_tokens(log_x, x, z_t, self.alpha(t), self.alpha_prime(t))
        return (loss.sum() / z_t.numel()).float()

    def nelbo(self, model, x, t, u, scored=None):
        """The UDLM NELBO in nats summed over the batch. scored: bool [L] or [N, L]; positions
        outside it are never noised and carry no term: the bound is on the scored tokens given the
        clean others (SPEC.md §7.3), though every position of the loss counts in training."""
        if scored is not None:
            u = torch.where(scored, u, 1.0)  # a uniform of 1 is never below the move chance
        z_t = self.forward_sample(x, t, u)
        terms = udlm_loss_tokens(self.denoise(model, z_t, t), x, z_t, self.alpha(t), self.alpha_prime(t))
        return (terms if scored is None else terms * scored).sum()
