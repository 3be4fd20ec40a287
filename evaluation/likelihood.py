"""Log-likelihoods of text under our models (SPEC.md §7.3): the lm-evaluation-harness
(harness.py), zero-shot perplexity (zeroshot.py) and LAMBADA (lambada.py) score tokens here.

An AR model's log-likelihood is exact: the sum of its next-token log-probabilities. A diffusion
model's is not tractable; we report its NELBO restricted to the scored tokens (`process.nelbo`):
only they are ever noised and only they carry terms, so everything else (the context, padding)
stays clean, and the bound is on -log p(scored tokens | the others), for every process. With the
exact denoiser of the absorbing process the bound is tight (its NELBO is an average over orders of
any-order AR likelihoods, each of which is exact), so the gap of a trained model is its modelling
error.

The NELBO is a Monte-Carlo estimate over K copies of the sequence with antithetic times
(MDLM's low-variance estimator) and independent masks; it is an upper bound on -log p in
expectation, and K is `time_samples`. Times are drawn from [SAMPLING_EPS, 1], as in training.
"""
import torch

from diffusion import antithetic_times

DEFAULT_TIME_SAMPLES = 32  # harness.py and zeroshot.py; the bound's standard error falls as 1/sqrt(K)


def model_device(model):
    return next(model.parameters()).device


@torch.no_grad()
def nelbo(model, process, x, scored, time_samples=DEFAULT_TIME_SAMPLES, generator=None, batch_size=None):
    """NELBO estimate (nats, summed over the scored positions) of tokens x [L] given the
    unscored ones, which are never masked. scored: bool [L]. Returns a float."""
    if x.dim() != 1 or scored.shape != x.shape:
        raise ValueError("nelbo scores one sequence: x and scored must be [L]")
    if time_samples < 1:
        raise ValueError(f"time_samples must be at least 1, got {time_samples}")
    device = model_device(model)
    x, scored = x.to(device), scored.to(device)
    t = antithetic_times(torch.rand((), generator=generator), time_samples).to(device)
    u = torch.rand((time_samples, len(x)), generator=generator).to(device)
    total, batch_size = 0.0, batch_size or time_samples
    for first in range(0, time_samples, batch_size):
        t_part, u_part = t[first:first + batch_size], u[first:first + batch_size]
        total += process.nelbo(model, x.expand(len(t_part), -1), t_part, u_part, scored).item()
    return total / time_samples


@torch.no_grad()
def one_pass_greedy(model, process, x, scored, generator=None):
    """Whether the argmax of x_theta over the tokens, decoded in one forward pass with every scored
    position at the process's prior and the rest given, is x there (the LAMBADA protocol of SDTT
    section 4). The prior is MASK for the absorbing process; for the uniform one, whose states carry
    no mark of "unknown", a seeded uniform draw, at the time whose noise level is the scored share
    of the positions (SPEC.md §7.3)."""
    device = model_device(model)
    x, scored = x.to(device)[None], scored.to(device)
    z = torch.where(scored, process.prior(1, x.shape[1], device, generator), x)
    t = torch.full((1,), scored.float().mean().item(), device=device)  # used if time-conditioned
    prediction = process.denoise(model, z, t)[..., :process.tokens].argmax(-1)[0]
    return bool((prediction[scored] == x[0, scored]).all())


def fit_window(context, continuation, length):
    """context + continuation as one list of at most `length` tokens, the context cut on the
    left (as the harness's Hugging Face models do). The continuation must fit whole."""
    if not continuation:
        raise ValueError("an empty continuation has no likelihood to score")
    if len(continuation) > length:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                         f"context of {length}")
    return (list(context) + list(continuation))[-length:]


def diffusion_continuation(model, process, context, continuation, time_samples=DEFAULT_TIME_SAMPLES,
                           generator=None):
    """(NELBO bound on -log p(continuation | context) in nats, one-pass greedy) of a diffusion model."""
    x = torch.tensor(fit_window(context, continuation, model.config.seq_len))
    scored = torch.arange(len(x)) >= len(x) - len(continuation)
    return (nelbo(model, process, x, scored, time_samples, generator),
            one_pass_greedy(model, process, x, scored, generator))


@torch.no_grad()
def ar_continuation(model, context, continuation):
    """(exact -log p(continuation | context) in nats, greedy) of an AR model: the context holds
    the start token if the caller wants one; it must not be empty, since the first token of
    the continuation needs a token to follow."""
    if not context:
        raise ValueError("an AR model scores a token after another: give a context or a start token")
    tokens = torch.tensor(fit_window(context, continuation, model.config.seq_len + 1),
                          device=model_device(model))
    log_probs = model(tokens[None, :-1])[0, -len(continuation):].float().log_softmax(-1)
    target = tokens[-len(continuation):]
    nll = -log_probs.gather(-1, target[:, None]).sum().item()
    return nll, bool((log_probs.argmax(-1) == target).all())


def rolling_windows(tokens, width):
    """Consecutive chunks of `width` tokens (the last may be shorter), each paired with all the
    tokens before it as context: a text's log-likelihood is the sum over its chunks, each
    scored given as much of its past as the model's window leaves room for."""
    if width < 1:
        raise ValueError(f"the window width must be at least 1, got {width}")
    return [(tokens[:start], tokens[start:start + width]) for start in range(0, len(tokens), width)]
