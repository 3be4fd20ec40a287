"""Samplers: ways to turn a denoiser into tokens, each a value behind one interface (SPEC.md §2).

    tokens, forwards = sampler(model, process, z, steps, generator=None, on_step=None)

z holds the process's prior where tokens are to be made (MASK, or uniform noise) and fixed tokens
(a prompt) elsewhere; fixed tokens never change. `forwards` counts sequence-forwards: one for each
sequence that went through the network (a batch forward of N sequences counts N). on_step(i, z) is
called after each step (a progress bar, a trace of the denoising). SAMPLERS names them all:

- "ancestral" (`Ancestral`): exact ancestral sampling as the first release ran it, the reference.
  One forward per step, the whole output every time; any process.
- "cached" (`CachedAncestral`, the absorbing process's default): the same draws in the same order,
  so the same tokens, with less work: the output layer only at the rows a step reveals, the trunk
  cached per sequence. "revealed" is the same with the first release's batch-wide cache.
- "topk" (`Confidence`): LLaDA-style confidence decoding, NOT ancestral sampling.
- "semi-ar" (`SemiAR`): MDLM's semi-autoregressive decoding of samples longer than the context.
- "greedy-tail" (`GreedyTail`): Duo's, ancestral steps then the argmax at every position.
- "analytic", "euler" (`ScoreSampler`): SEDD's, from concrete scores.
The MASK-based ones ask `process.has_mask`, the score ones `process.has_scores`.
"""
import torch

from diffusion import T_MIN, LogLinear, draw_tokens, generator_device, sample_categorical, shaped_probs, time_grid


class UnsplitNetwork:
    """A network without `trunk` and `head` (the exact denoiser) seen as one: its 'hidden states'
    are its whole output and the head picks rows. The cached samplers still save it forwards,
    but not output-layer work."""

    def __init__(self, model):
        self.model = model

    def trunk(self, z, sigma):
        logits = self.model(z, sigma)
        return logits, logits.new_zeros(z.shape[0], 0)

    def head(self, rows, c):
        return rows


class Shaped:
    """A denoiser whose categorical over the process's V states is taken at a temperature and nucleus
    (`diffusion.shaped_probs`), at every output: so every sampler draws each reveal, each posterior
    and each final fill from it. Each row keeps its total mass (logsumexp), so SEDD's scores keep
    their move probability and only the choice of token is reshaped; for a softmax it is a constant.
    Columns past the states (MASK) are left as they are: carry-over, SUBS and no re-masking do not
    change. `shaped` gives the network itself at temperature 1 and top-p 1."""

    def __init__(self, model, states, temperature, top_p):
        self.model, self.states, self.temperature, self.top_p = model, states, temperature, top_p
        self.config = model.config
        if hasattr(model, "trunk"):  # a split network stays split: the cached samplers keep their savings
            self.trunk = model.trunk
            self.head = lambda hidden, c: self.shape(model.head(hidden, c))

    def __call__(self, z, sigma):
        return self.shape(self.model(z, sigma))

    def parameters(self):
        return self.model.parameters()

    def shape(self, logits):
        head = logits[..., :self.states].float()
        if self.top_p >= 1.0:  # the same law, left in log space: 3x cheaper than a float64 round trip at V = 4096
            log_p = (head / self.temperature).log_softmax(-1)
        else:
            log_p = shaped_probs(head, self.temperature, self.top_p).log().float()
        return torch.cat([(log_p + head.logsumexp(-1, keepdim=True)).to(logits.dtype), logits[..., self.states:]], -1)


def shaped(model, process, temperature=1.0, top_p=1.0):
    """The model, its categorical at `temperature` and `top_p` (`Shaped`; itself at 1 and 1)."""
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"temperature must be above 0 and top-p in (0, 1], got {temperature} and {top_p}")
    if temperature == 1.0 and top_p == 1.0:
        return model
    return Shaped(model, process.vocab_size, temperature, top_p)


def trunk_and_head(model):
    return model if hasattr(model, "trunk") else UnsplitNetwork(model)


class HiddenCache:
    """The trunk's final hidden states of each sequence, and the tokens they were computed from.

    mode "sequence": only the sequences asked for whose tokens changed since their last forward
    go through the trunk; "batch": the whole batch goes through when any sequence changed (the
    first release's cache); "none": the sequences asked for go through at every call. With
    time conditioning the hidden states depend on t, so nothing is reused.
    """

    def __init__(self, network, process, mode="sequence"):
        check_cache_mode(mode)
        self.network, self.process, self.mode = network, process, mode
        self.z = self.hidden = self.c = None
        self.forwards = 0  # sequence-forwards

    def logits(self, z, rows, t):
        """Logits [M, V+1] at the (sequence, position) rows of z, at time t."""
        needed = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
        needed[rows[0]] = True
        stale = needed
        if self.hidden is not None and self.mode != "none" and not self.process.time_conditioned:
            changed = (z != self.z).any(1)
            stale = needed & changed if self.mode == "sequence" else changed.any().expand_as(needed)
        if stale.any():
            self.update(z, stale.nonzero().squeeze(1), t)
        return self.network.head(self.hidden[rows], self.c[rows[0]])

    def update(self, z, index, t):
        hidden, c = self.network.trunk(z[index], self.process.noise_input(t, len(index), z.device))
        if self.hidden is None:
            self.z = torch.full_like(z, -1)  # no token: a sequence never run is stale
            self.hidden = hidden.new_zeros(*z.shape, *hidden.shape[2:])
            self.c = c.new_zeros(z.shape[0], *c.shape[1:])
        self.z[index], self.hidden[index], self.c[index] = z[index], hidden, c
        self.forwards += len(index)


CACHE_MODES = ("sequence", "batch", "none")


def check_cache_mode(mode):
    if mode not in CACHE_MODES:
        raise ValueError(f"cache {mode!r}: choose {', '.join(CACHE_MODES)}")


def require_mask(process, name):
    """The reveal-based samplers exist only for a process with a MASK state: one clear error otherwise."""
    if not process.has_mask:
        raise ValueError(f"the {name} sampler needs an absorbing process, with a MASK state; for the {process.name} "
                         "process use --sampler ancestral or greedy-tail")


def revealed_steps(process, z, steps, t_min, final, cache, generator, on_step):
    """Ancestral sampling, with the network asked only for the rows it needs. Step i first draws
    the positions it reveals, then their tokens from the logits of those rows (`cache`, a
    HiddenCache); at the end, positions still MASK are filled (`final`)."""
    times = time_grid(steps, t_min)
    for i in range(steps):
        revealed = process.reveal_positions(z, times[i + 1], times[i], generator)
        if revealed.any():  # no prediction is needed, nor computed, for a step that reveals nothing
            rows = revealed.nonzero(as_tuple=True)
            z = z.clone()
            z[rows] = process.draw(cache.logits(z, rows, times[i]), generator)
        if on_step is not None:
            on_step(i, z)
    rows = (z == process.mask_id).nonzero(as_tuple=True)
    if len(rows[0]):
        z = z.clone()
        z[rows] = process.final_tokens(cache.logits(z, rows, times[-1]), final, generator)
    return z, cache.forwards


def ancestral_steps(model, process, z, times, cache, generator, on_step):
    """The K reverse steps of ancestral sampling on `times` (K + 1 of them), one forward per step,
    its output reused after a step that changed no sequence when `cache` and the network is not
    time-conditioned (x_theta then depends on z alone). Returns (z, the last output and the z it
    was computed from, sequence-forwards)."""
    reuse = cache and not process.time_conditioned
    logits, seen, forwards = None, None, 0
    for i in range(len(times) - 1):
        if not (reuse and seen is not None and torch.equal(z, seen)):
            logits = model(z, process.noise_input(times[i], z.shape[0], z.device))
            seen, forwards = z, forwards + z.shape[0]
        z = process.reverse_step(logits, z, times[i + 1], times[i], generator)
        if on_step is not None:
            on_step(i, z)
    return z, (logits, seen), forwards


class Ancestral:
    """Exact ancestral sampling as the first release ran it, the reference the fast samplers are
    tested against: one forward per step, the whole output every time, `process.reverse_step` on
    it (any process), then the process's final pass at t_min (`process.final_step`): MDLM's fill of
    the positions still MASK, or Duo's ancestral removal at every position (K + 1 forwards).

    final: how the absorbing process fills positions still MASK ("argmax" is MDLM's noise removal,
    "sample" draws them). cache: reuse the output after a step that changed no sequence.
    """
    extends_context = False

    def __init__(self, final="argmax", cache=True, t_min=T_MIN):
        self.final, self.cache, self.t_min = final, cache, t_min

    @torch.no_grad()
    def __call__(self, model, process, z, steps, generator=None, on_step=None):
        times = time_grid(steps, self.t_min)
        z, (logits, seen), forwards = ancestral_steps(model, process, z, times, self.cache, generator, on_step)
        if not process.final_positions(z).any():
            return z, forwards
        if not (self.cache and not process.time_conditioned and torch.equal(z, seen)):
            logits = model(z, process.noise_input(times[-1], z.shape[0], z.device))
            forwards += z.shape[0]
        return process.final_step(logits, z, times[-1], self.final, generator), forwards


class CachedAncestral:
    """Exact ancestral sampling, with the output layer only at the rows a step reveals and the
    trunk cached per sequence (cache "sequence"; "batch" and "none" as in `HiddenCache`).

    The same generator gives the same tokens as `Ancestral`: the reveal draws come first, in
    the same order, then the token draws, from the same logits.
    """
    extends_context = False

    def __init__(self, final="argmax", cache="sequence", t_min=T_MIN):
        check_cache_mode(cache)
        self.final, self.cache, self.t_min = final, cache, t_min

    @torch.no_grad()
    def __call__(self, model, process, z, steps, generator=None, on_step=None):
        require_mask(process, "revealed/cached")
        cache = HiddenCache(trunk_and_head(model), process, self.cache)
        return revealed_steps(process, z, steps, self.t_min, self.final, cache, generator, on_step)


class Confidence:
    """Confidence-ordered decoding, as LLaDA-style decoders do (Nie et al. 2025). This is NOT
    ancestral sampling: it does not sample the model's reverse process, and it lowers entropy.

    Each step draws a token at every MASK position (softmax at `temperature`; 0 takes the
    argmax), then keeps the drawn tokens of the positions where they are most probable: as
    many as the schedule unmasks in that step in expectation, rounded, and all that are left
    at the last step. Revealed tokens are never re-masked; fixed tokens never change.
    """
    extends_context = False

    def __init__(self, temperature=1.0, t_min=T_MIN):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.temperature, self.t_min = temperature, t_min

    def quotas(self, process, masked, s, t, last):
        """Positions each sequence reveals in a step from t to s: its MASK count minus the count
        the schedule leaves masked at s, which is (1 - alpha_s) / (1 - alpha_t) of it."""
        if last:
            return masked
        stay = (1 - process.alpha(s)) / (1 - process.alpha(t))
        return masked - torch.round(masked.double() * stay).long()

    def pick(self, logits, generator):
        """A token for each row, and its probability under the tempered softmax."""
        if self.temperature == 0:
            probs = logits.double().softmax(-1)
            tokens = probs.argmax(-1)
        else:
            probs = (logits.double() / self.temperature).softmax(-1)
            tokens = sample_categorical(probs, generator)
        return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1)

    @torch.no_grad()
    def __call__(self, model, process, z, steps, generator=None, on_step=None):
        require_mask(process, "topk")
        times = time_grid(steps, self.t_min)
        cache = HiddenCache(trunk_and_head(model), process, "sequence")
        for i in range(steps):
            masked = z == process.mask_id
            quota = self.quotas(process, masked.sum(1), times[i + 1], times[i], i == steps - 1)
            candidates = masked & (quota > 0)[:, None]
            if candidates.any():
                rows = candidates.nonzero(as_tuple=True)
                tokens, confidence = self.pick(cache.logits(z, rows, times[i])[:, :process.mask_id], generator)
                score = torch.full(z.shape, -1.0, dtype=torch.float64, device=z.device)
                score[rows] = confidence
                rank = score.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
                drawn = z.clone()
                drawn[rows] = tokens
                z = torch.where(candidates & (rank < quota[:, None]), drawn, z)
            if on_step is not None:
                on_step(i, z)
        return z, cache.forwards


class SemiAR:
    """MDLM's semi-autoregressive decoding: samples longer than the model's context, made window
    by window with an inner sampler. The first window is sampled whole; each next one slides
    by `block` tokens (default: half the context), keeping the last context - block tokens made
    so far as a fixed prompt. Each window takes `steps` steps; forwards add up."""
    extends_context = True

    def __init__(self, inner, block=None):
        self.inner, self.block = inner, block

    @torch.no_grad()
    def __call__(self, model, process, z, steps, generator=None, on_step=None):
        require_mask(process, "semi-ar")
        context = model.config.seq_len
        block = self.block or max(1, context // 2)
        if not 0 < block <= context:
            raise ValueError(f"the semi-AR block must be in 1..{context} (the context), got {block}")
        z, end, forwards = z.clone(), min(context, z.shape[1]), 0
        while True:
            window = slice(max(0, end - context), end)
            z[:, window], more = self.inner(model, process, z[:, window], steps, generator,
                                            None if on_step is None else window_reporter(z, window, on_step))
            forwards += more
            if end == z.shape[1]:
                return z, forwards
            end = min(end + block, z.shape[1])


def window_reporter(z, window, on_step):
    """on_step for a window of z: reports the whole of z, with the window's current state."""
    def report(i, part):
        whole = z.clone()
        whole[:, window] = part
        on_step(i, whole)
    return report


class GreedyTail:
    """Duo's Greedy-Tail (SPEC.md §4.5): K ancestral steps down to t_min, then one more forward at
    t_min and the argmax of x_theta over the tokens at *every* position, in place of the final
    pass of `Ancestral`: K + 1 forwards, as there. Lower entropy than ancestral sampling. For the
    absorbing process the argmax changes nothing already revealed (carry-over): it is `Ancestral`
    with the argmax fill."""
    extends_context = False

    def __init__(self, t_min=T_MIN):
        self.t_min = t_min

    @torch.no_grad()
    def __call__(self, model, process, z, steps, generator=None, on_step=None):
        z, _, forwards = ancestral_steps(model, process, z, time_grid(steps, self.t_min), True, generator, on_step)
        log_x = process.denoise(model, z, self.t_min)
        return log_x[..., :process.tokens].argmax(-1), forwards + z.shape[0]


# ----------------------------------------------------------------------------- SEDD's samplers, from concrete scores
# With the interface of samplers.py (SPEC.md §5.3). On the grid linspace(1, T_MIN, K+1), a step
# from t to s moves a MASK position to token y with probability P(y) and leaves it MASK with
# 1 - sum_y P(y); real tokens never change.
# - "analytic" (Tweedie tau-leaping, the sampler behind SEDD's numbers): P(y) = expm1(dsig) s_y,
#   dsig = sigma(t) - sigma(s). With normalised scores s = r_t x_hat this is exactly the
#   ancestral step (alpha_s - alpha_t) / (1 - alpha_t) x_hat_y.
# - "euler": P(y) = (t - s) sigma'(t) s_y, a first-order step (poor on coarse grids).
# Unnormalised scores can give sum_y P(y) > 1, a negative stay probability: it is clamped to 0 and
# the rest renormalised. A step is drawn in two stages that factor it exactly, as
# diffusion.reveal does: which MASK positions move (one float64 uniform each), then their tokens
# (float64 inverse CDF over the real tokens, proportional to s_y). The last pass, at T_MIN, fills
# what is still MASK with y ~ s_y (SEDD's denoiser step: drawn, not argmax). K steps + 1 forwards.

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
        if not process.has_scores:
            raise ValueError(f"sampler {self.rule!r} needs a score model (SEDD, train.py --model sedd); "
                             f"this model's process is {process.name!r}: use --sampler ancestral")
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


def expected_forwards(steps, positions, batch=1, cache="sequence", schedule=None, t_min=T_MIN):
    """Expected sequence-forwards per sequence of `CachedAncestral` from all-MASK, `positions` per
    sequence, without time conditioning. A position is revealed at step i with probability
    p_i = (alpha_s - alpha_t) / (1 - alpha_1), independently of the others. The sequence cache
    runs a sequence once per step that reveals one of its positions; the batch cache runs the
    whole batch once per step that reveals one of its batch x positions. Both add one forward
    for the final fill when MASK is left, which happens with probability 1 - (sum_i p_i)^n."""
    alpha = (schedule or LogLinear()).alpha(time_grid(steps, t_min))
    p = (alpha[1:] - alpha[:-1]) / (1 - alpha[0])
    n = positions if cache == "sequence" else positions * batch
    return ((1 - (1 - p) ** n).sum() + 1 - p.sum().clamp(0, 1) ** n).item()


SAMPLERS = {
    "ancestral": lambda final: Ancestral(final),                # the reference: whole output, batch cache
    "revealed": lambda final: CachedAncestral(final, cache="batch"),   # output layer at revealed rows only
    "cached": lambda final: CachedAncestral(final, cache="sequence"),  # ... and the trunk cached per sequence
    "topk": lambda final: Confidence(),                         # LLaDA-style, not ancestral
    "semi-ar": lambda final: SemiAR(CachedAncestral(final)),           # past the context, block by block
    "greedy-tail": lambda final: GreedyTail(),                  # Duo: K ancestral steps, then argmax everywhere
    "analytic": lambda final: ScoreSampler("analytic"),         # SEDD scores, Tweedie tau-leaping (final: drawn)
    "euler": lambda final: ScoreSampler("euler"),               # SEDD scores, Euler steps (final: drawn)
}
DEFAULT_SAMPLER = "cached"  # exact (the same tokens as "ancestral"), and the least work


def sampler_name(name=None, process=None):
    """`name`, or when not given the process's own (`process.default_sampler`: cached for MDLM,
    analytic for SEDD, ancestral for uniform-state), else DEFAULT_SAMPLER."""
    return name or (DEFAULT_SAMPLER if process is None else process.default_sampler)


def make_sampler(name=None, final="argmax", process=None):
    """The sampler called `name` (default: the process's, `sampler_name`)."""
    name = sampler_name(name, process)
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name](final)
