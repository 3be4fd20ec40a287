"""Self-Distillation Through Time (SDTT, Deschenaux & Gulcehre, ICLR 2025).

A student learns to do in one sampling step what the teacher does in n. Targets come from
running n ancestral teacher steps (Algorithm 1); the student matches them under a divergence
(appendix B) on the positions masked in x_t (Algorithm 2). Rounds, each distilling the previous
round's student, divide the number of steps by n each time (section 3.1). All of it is here:
the divergences, the targets, the loss, one training step and the loop (`distill`); SPEC.md §3.
"""
import torch

from diffusion import T_MIN, reveal, step_size
from training.run import distilled_for
from training.step import frozen, make_ema, optimizer_step, seed_step, trainable_copy, trained


# ----------------------------------------------------------------------------- divergences
# All take log-probabilities over the real tokens, [..., V], and return one value per row.

def reverse_kl(student_log, target_log):
    """KL(student || teacher), appendix B.1: zero-forcing; the paper's default."""
    return (student_log.exp() * (student_log - target_log)).sum(-1)


def forward_kl(student_log, target_log):
    """KL(teacher || student), appendix B.1: zero-avoiding."""
    return (target_log.exp() * (target_log - student_log)).sum(-1)


def total_variation(student_log, target_log):
    """1/2 sum |p - q|, appendix B.2; lies in [0, 1]."""
    return 0.5 * (student_log.exp() - target_log.exp()).abs().sum(-1)


def mse_log_probs(student_log, target_log):
    """Mean squared difference of log-probabilities, appendix B.3 (eq. 11)."""
    return (student_log - target_log).pow(2).mean(-1)


DIVERGENCES = {"reverse_kl": reverse_kl, "forward_kl": forward_kl,
               "tv": total_variation, "mse": mse_log_probs}


# ----------------------------------------------------------------------------- teacher targets

def analytic_step(log_x, z_t, t_s, t_t, process, generator=None):
    """The analytic (Tweedie tau-leaping) update of SEDD/Campbell et al. for the absorbing
    process, written with the score ratio p_t(v)/p_t(MASK) = x[v] alpha_t / (1 - alpha_t).

    Unmasking to v has probability (exp(sigma_t - sigma_s) - 1) * score[v]; summed over v that
    is the chance a MASK is revealed, and the token is drawn in proportion to the score, i.e.
    from x. For the absorbing process this is algebraically the ancestral posterior of SDTT
    eq. 2, which is why the paper's ablation (its figs. 10-11) finds no difference.
    """
    s_t, s_s = (process.schedule.sigma(torch.as_tensor(v, dtype=torch.float64)) for v in (t_t, t_s))
    score_mass = torch.exp(-s_t) / -torch.expm1(-s_t)     # sum_v score[v], as x sums to 1
    return reveal(log_x, z_t, torch.expm1(s_t - s_s) * score_mass, process.mask_id, generator)


def ancestral_step(log_x, z_t, t_s, t_t, process, generator=None):
    """One ancestral step z_t -> z_s from the exact posterior (SDTT eq. 2) with x = x_theta."""
    return process.reverse_step(log_x, z_t, t_s, t_t, generator)


TEACHER_SAMPLERS = {"ancestral": ancestral_step, "analytic": analytic_step}


@torch.no_grad()
def teacher_targets(teacher, x_t, t_start, n_steps, delta, process, t_min=T_MIN, sampler="ancestral",
                    generator=None):
    """SDTT Algorithm 1: log-prob targets [N, L, V+1] from n_steps teacher steps of size delta.

    A position denoised at step i takes the teacher's log-probs of step i (lines 9-10); a
    position still MASK after the last step takes the last step's (line 13). Positions not
    masked in x_t keep zeros: the loss never reads them.
    """
    step = TEACHER_SAMPLERS[sampler]
    target, z = None, x_t
    for i in range(n_steps):
        t_cur = (t_start - i * delta).clamp(min=t_min)                       # line 7
        log_x = process.denoise(teacher, z, t_cur)
        if target is None:
            target = torch.zeros_like(log_x)
        z_new = step(log_x, z, (t_cur - delta).clamp(min=0), t_cur, process, generator)  # line 8
        denoised = z_new != z                                                # line 9
        target[denoised] = log_x[denoised]                                   # line 10
        z = z_new                                                            # line 11
    still_masked = process.loss_positions(z)
    target[still_masked] = log_x[still_masked]                               # line 13
    return target


def distillation_loss(student, teacher, x, t_start, u, process, n_steps, delta, divergence="reverse_kl",
                      sampler="ancestral"):
    """SDTT Algorithm 2, lines 8-11: noise x to x_t at t_start, compare the student's one-step
    prediction with the teacher's n-step targets on the positions masked in x_t."""
    x_t = process.forward_sample(x, t_start, u)                              # line 8
    student_log = process.denoise(student, x_t, t_start)                     # line 9
    target = teacher_targets(teacher, x_t, t_start, n_steps, delta, process, sampler=sampler)  # line 10
    masked = process.loss_positions(x_t)
    if not masked.any():
        return student_log.sum() * 0.0
    real = slice(0, process.vocab_size)
    per_position = DIVERGENCES[divergence](student_log[masked][:, real], target[masked][:, real])
    return per_position.mean()                                               # line 11


def step_schedule(start_steps, teacher_steps_per_target, rounds):
    """Sampling steps of the teacher of each round: start, start/n, start/n^2, ...
    (section 3.1: m = 1024, n = 2, 7 rounds). Round j's student samples with entry j+1."""
    schedule = [start_steps]
    for _ in range(rounds):
        if schedule[-1] % teacher_steps_per_target:
            raise ValueError(f"{schedule[-1]} steps do not split into {teacher_steps_per_target} teacher steps")
        schedule.append(schedule[-1] // teacher_steps_per_target)
    return schedule


# ----------------------------------------------------------------------------- the loop

def training_step(student, teacher, ema, chunks, delta, process, cfg, env):
    """Algorithm 2, lines 8-12, on one batch (micro-batches `chunks` of (x, t_start, u)): the
    student's step against targets of --teacher-steps teacher steps of size delta; then its EMA."""
    def loss(x, t, u):
        return distillation_loss(student.run, teacher, x, t, u, process, cfg.teacher_steps, delta, cfg.divergence,
                                 cfg.teacher_sampler), {}
    value, _ = optimizer_step(student, chunks, loss, env, cfg.grad_clip)
    ema.update_parameters(student.module)
    return {cfg.divergence: value}


def distill(teacher, process, run):
    """Iterated SDTT: Algorithm 2 once per round (section 3.1). Round j's teacher samples with
    schedule[j] steps; its student learns to take n = --teacher-steps of them in one, so it samples
    with schedule[j + 1], and then teaches round j + 1. Returns the final table's rows: (label,
    checkpoint, sampling steps) of each round's student."""
    cfg, env = run.cfg, run.env
    schedule = step_schedule(cfg.start_steps, cfg.teacher_steps, cfg.rounds)
    student = trained(trainable_copy(teacher), cfg.lr, cfg, env)          # line 4: the student starts as the teacher
    teacher, ema = frozen(teacher), make_ema(student.module, cfg.ema)
    first_round, first_step = run.start([student], ema, model=student.module)
    if first_round > 0:  # a resumed run: round j's teacher is round j - 1's student, as it was saved
        teacher.load_state_dict(run.read(f"round{first_round - 1}.pt")["ema" if cfg.ema_teacher else "model"])
    for j in range(first_round, cfg.rounds):
        first = first_step if j == first_round else 0
        if cfg.reset_optimizer and first == 0:
            student.optimizer.state.clear()
        delta = step_size(schedule[j])                                     # the teacher's step: 1 / schedule[j]
        recorded = distilled_for(schedule[j + 1], j, schedule[j])
        run.begin(f"sdtt round {j} ({schedule[j]}->{schedule[j + 1]} steps)", first, passes=(1, cfg.teacher_steps))
        for step in range(first, cfg.iters):                               # line 5
            chunks = run.batch(step)                                       # lines 6-7: x_0 ~ D, t_start ~ U[0, 1]
            seed_step(cfg, env, step)
            logs = training_step(student, teacher, ema, chunks, delta, process, cfg, env)  # lines 8-12
            run.after_step(step + 1, logs, **recorded)                     # log, checkpoint, validate
        run.end_round(j, cfg.rounds, keep=True, **recorded)                # line 14: round{j}.pt
        taught = ema.module if cfg.ema_teacher else student.module         # the student (or its EMA, --ema-teacher)
        teacher.load_state_dict(taught.state_dict())                       # teaches round j + 1
    return [(f"SDTT round {j}", run.out / f"round{j}.pt", schedule[j + 1]) for j in range(cfg.rounds)]
