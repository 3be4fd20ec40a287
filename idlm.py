"""Inverse-distilled Diffusion Language Models (IDLM; Li et al. 2026), for every teacher family.

Three networks start from the teacher: the frozen teacher f*, a trainable fake f_hat and the
student G, a denoiser whose output is a point of the simplex per position (so it samples with the
ordinary multistep sampler). Algorithm 1 alternates a fake step (eq. 10: f_hat learns to denoise
G's outputs) and a student step (eq. 11: G lowers L(f*, G) - L(f_hat, G) on its own outputs). By
Theorem 3.1 that gap is zero exactly when G's outputs follow the data (SPEC.md §6). The loop is
`distill`; how its steps are estimated is a `Choices` (SPEC.md §6.5).
"""
from dataclasses import dataclass

import torch
from torch.func import functional_call
from tqdm import tqdm

import evaluate
from diffusion import SAMPLING_EPS
from plumbing import devices
from processes import duo
from training.run import distilled_for
from training.step import frozen, make_ema, optimizer_step, seed_step, trainable_copy, trained


@dataclass(frozen=True)
class Choices:
    """How IDLM's steps are estimated (SPEC.md §6.5: each choice with its flag and default).

    times   None: the student's input time and the loss time range over [0, 1]; (lo, hi): both
            in [lo, hi] (--noise-window, given as the alphas at its ends)
    score   add the score-function term of the discrete loss latent's law (`relaxed_gap`)
    draws   loss latents z_t per student output (--latent-draws)
    scale   what the losses are multiplied by: 1 per token, or L summed over positions (--loss-per)
    """
    times: tuple = None
    score: bool = False
    draws: int = 1
    scale: float = 1.0


def within(t, times):
    """Times t in [0, 1] moved into the window `times` (unchanged without one)."""
    return t if times is None else times[0] + (times[1] - times[0]) * t


def student_simplex(student, x_t, t, process):
    """G_theta(x_t, t): a distribution over the V real tokens per position (float32)."""
    return process.denoise(student, x_t, t)[..., :process.vocab_size].exp()


def student_output(student, x, t, u, process, choices):
    """Algorithm 1's SamplingFunc, then the student: x [N, L] noised to x_t~ at time t~ [N] (in
    the window) by the process's latents (discrete z_t~, or w~/tau with --tau: SPEC.md §6.4), then
    G(x_t~, t~) [N, L, V]; and a fresh loss time t [N] for each sequence."""
    x0_soft = student_simplex(student, process.forward_sample(x, within(t, choices.times), u),
                              within(t, choices.times), process)
    t_loss = within(SAMPLING_EPS + (1 - SAMPLING_EPS) * torch.rand(x.shape[0], device=x.device), choices.times)
    return x0_soft, t_loss


def weights_fixed(model):
    """The model as a function of its input only: its weights enter as constants, so a student step
    differentiates the frozen teacher and the fake w.r.t. a soft input (Duo's w_t / tau) and never
    gives their weights a gradient. On discrete inputs nothing is recorded, as under no_grad."""
    weights = {name: p.detach() for name, p in model.named_parameters()}
    return lambda *inputs: functional_call(model, weights, inputs)


def teacher_fake_gap(log_teacher, log_fake, x0_soft, z_t, t, process, shares=False):
    """IDLM eq. 11, the student's objective, defined once: L(f*, x0) - L(f_hat, x0), the teacher's
    soft loss minus the fake's on the same z_t (SPEC.md §6.2). log_teacher, log_fake [N, L, V(+1)];
    x0_soft [N, L, V]. A process whose two losses share large terms, which would cancel in floating
    point, gives the same difference as one sum (`process.loss_gap`). shares: each sequence's share
    [N] instead of the batch's mean. With z_t held fixed; `relaxed_gap` adds the term of its law."""
    if process.loss_gap is not None:
        return process.loss_gap(log_teacher, log_fake, x0_soft, z_t, t, shares=shares)
    return process.soft_loss(log_teacher, x0_soft, z_t, t, shares) - process.soft_loss(log_fake, x0_soft, z_t, t, shares)


def relaxed_gap(x0_soft, t, process, log_outputs, choices):
    """E_{z_t ~ q(.|x0)} gap(x0, z_t) at the student's output x0 [N, L, V] and loss times t [N], as
    a loss whose value is the mean gap over `choices.draws` latents per output and whose gradient,
    with `choices.score`, is unbiased for the expectation's (SPEC.md §6.4): the law q(z_t | x0)
    depends on x0, so the score-function term E[gap d log q / d x0] is added, each sequence's
    share less the mean share of the other draws (a control variate independent of this draw),
    as s - stop_gradient(s) so the logged value stays the gap. log_outputs(z_t, t) -> (log f*,
    log f_hat). Returns (loss, logs: the teacher's and the fake's soft losses)."""
    k = choices.draws
    x0, t = (x0_soft.repeat(k, 1, 1), t.repeat(k)) if k > 1 else (x0_soft, t)
    z_t = process.forward_sample_soft(x0, t)
    log_teacher, log_fake = log_outputs(z_t, t)
    with torch.no_grad():
        logs = {"teacher_loss": choices.scale * process.soft_loss(log_teacher, x0, z_t, t).item(),
                "fake_loss_on_student": choices.scale * process.soft_loss(log_fake, x0, z_t, t).item()}
    if not choices.score:
        return teacher_fake_gap(log_teacher, log_fake, x0, z_t, t, process), logs
    shares = teacher_fake_gap(log_teacher, log_fake, x0, z_t, t, process, shares=True)
    per_draw = shares.detach().view(k, -1)
    others = (per_draw.sum(0, keepdim=True) - per_draw) / (k - 1) if k > 1 else torch.zeros_like(per_draw)
    score = ((per_draw - others).reshape(-1) * process.latent_log_prob(x0, z_t, t)).sum()
    return shares.sum() + score - score.detach(), logs


def fake_loss(fake, student, x, t, u, process, choices=Choices()):
    """Fake step (IDLM eq. 10): the process's loss of f_hat on the student's detached outputs."""
    with torch.no_grad():
        x0_soft, t_loss = student_output(student, x, t, u, process, choices)
        z_t = process.forward_sample_soft(x0_soft, t_loss)
    return choices.scale * process.soft_loss(process.loss_log_outputs(fake, z_t, t_loss), x0_soft, z_t, t_loss)


def student_loss(student, teacher, fake, x, t, u, process, choices=Choices()):
    """Student step (IDLM eq. 11) on data x [N, L] with times t [N] and mask uniforms u [N, L].
    Returns (loss, logs: the teacher's and the fake's losses, whose difference is the loss)."""
    x0_soft, t_loss = student_output(student, x, t, u, process, choices)
    teacher, fake = weights_fixed(teacher), weights_fixed(fake)

    def log_outputs(z_t, t):
        return process.loss_log_outputs(teacher, z_t, t), process.loss_log_outputs(fake, z_t, t)

    loss, logs = relaxed_gap(x0_soft, t_loss, process, log_outputs, choices)
    return choices.scale * loss, logs


# ----------------------------------------------------------------------------- the loop

def latents_and_choices(cfg, process):
    """(the latents IDLM draws, its `Choices`) from the flags (SPEC.md §6.5). --noise-window gives
    the alphas at the window's ends: times of the process's schedule for discrete latents, Duo's
    gammas at the vocabulary for Gaussian ones (--tau, IDLM-code's latents)."""
    window = sorted(cfg.noise_window, reverse=True) if cfg.noise_window else None
    times, latents = None, process
    if cfg.tau:
        gammas = [duo.gamma_of_alpha(a, process.vocab_size) for a in window] if window else duo.GAMMA_RANGE
        latents = duo.Curriculum(process, cfg.tau, duo.GaussianSchedule(process.vocab_size, *gammas))
    elif window:
        times = tuple(process.schedule.time_of(a) for a in window)
    scale = float(cfg.seq_len) if cfg.loss_per == "sequence" else 1.0
    return latents, Choices(times, cfg.idlm_gradient == "exact", cfg.latent_draws, scale)


@torch.no_grad()
def diagnostics(student, fake, teacher, x, t, u, latents, choices):
    """What shows a collapse coming (SPEC.md §6.6), on a batch of data: the entropy of the student's
    output per position and of a sample drawn from it (as the final table measures it), and the
    fake's and the teacher's losses on the data (a fake that drifts from the data is worse there)."""
    with devices.eval_mode(student), devices.eval_mode(fake):
        x0, _ = student_output(student, x, t, u, latents, choices)
        tokens = torch.distributions.Categorical(probs=x0.double()).sample()
        losses = {}
        for name, model in (("fake", fake), ("teacher", teacher)):
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(0)  # the same draws for both
                losses[f"{name}_loss_on_data"] = latents.loss(model, x, t, u).item()
    return {"student_output_entropy": -(x0 * x0.clamp_min(1e-30).log()).sum(-1).mean().item(),
            "student_sample_entropy": evaluate.token_entropy(tokens).mean().item(), **losses}


def warn_if_collapsing(found, first):
    """One warning line when the sample entropy fell below half its first value. Returns the first."""
    first = first or found["student_sample_entropy"]
    if found["student_sample_entropy"] < 0.5 * first:
        tqdm.write(f"warning: the student's sample entropy fell from {first:.2f} to "
                   f"{found['student_sample_entropy']:.2f} nats: IDLM is collapsing (see SPEC.md §6.6)")
    return first


def training_step(student, fake, teacher, ema, chunks, fake_chunks, latents, choices, cfg, env):
    """One iteration of Algorithm 1: a fake step (eq. 10) on each batch of `fake_chunks` (the step's
    own with --fake-batch same), then the student step (eq. 11) on `chunks`, then the student's EMA.
    Each batch is micro-batches of (x, t, u)."""
    def fake_step_loss(x, t, u):
        return fake_loss(fake.run, student.module, x, t, u, latents, choices), {}

    def student_step_loss(x, t, u):
        return student_loss(student.run, teacher, fake.module, x, t, u, latents, choices)
    fake_values = [optimizer_step(fake, each, fake_step_loss, env, cfg.grad_clip)[0] for each in fake_chunks]
    value, logs = optimizer_step(student, chunks, student_step_loss, env, cfg.grad_clip)
    ema.update_parameters(student.module)
    return {"fake": sum(fake_values) / len(fake_values), **logs, "student": value}


def distill(teacher, process, run):
    """IDLM Algorithm 1: --iters iterations of --fake-steps fake steps and one student step. Returns
    the final table's rows: (label, checkpoint, sampling steps) of the student at L/16 and L/32."""
    cfg, env = run.cfg, run.env
    latents, choices = latents_and_choices(cfg, process)
    student = trained(trainable_copy(teacher), cfg.lr, cfg, env)          # G <- CopyWeights(f*)
    fake = trained(trainable_copy(teacher), cfg.fake_lr, cfg, env)        # f_hat <- CopyWeights(f*)
    teacher, ema = frozen(teacher), make_ema(student.module, cfg.ema)
    _, first = run.start([fake, student], ema, model=student.module, fake=fake.module)
    steps = sorted({max(1, cfg.seq_len // 16), max(1, cfg.seq_len // 32)}, reverse=True)
    recorded = {"idlm_latent": f"gaussian-argmax, tau = {cfg.tau} (inexact)" if cfg.tau else "exact relaxation",
                **distilled_for(steps[-1], 0, cfg.seq_len)}   # the teacher's reference: L steps
    # a fake step: a student forward and a fake training pass; the student step: a training pass and,
    # per latent draw, the forwards of the teacher and the fake
    run.begin("idlm", first, passes=(1 + cfg.fake_steps, cfg.fake_steps + 2 * choices.draws))
    first_entropy = None
    for step in range(first, cfg.iters):                                  # for k = 1 to K
        chunks = run.batch(step)                                          # SamplingFunc's x~_0 and t~
        fake_chunks = ([run.batch(step, stream) for stream in range(1, cfg.fake_steps + 1)]
                       if cfg.fake_batch == "fresh" else [chunks] * cfg.fake_steps)
        seed_step(cfg, env, step)
        logs = training_step(student, fake, teacher, ema, chunks, fake_chunks, latents, choices, cfg, env)
        found = {}
        if run.log_due(step + 1):                                         # what shows a collapse coming
            found = diagnostics(student.module, fake.module, teacher, *chunks[0], latents, choices)
            first_entropy = warn_if_collapsing(found, first_entropy)
        run.after_step(step + 1, logs, found, **recorded)
    run.end_round(0, **recorded)
    return [("IDLM", run.out / "ckpt.pt", s) for s in steps]
