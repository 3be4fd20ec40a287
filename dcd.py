"""Duo's Discrete Consistency Distillation (DCD; Sahoo et al. 2025) of a uniform-state teacher.

Round j trains the student against a frozen copy of itself at a time gap dt = 2^j / T_d: the
student, seeing the Gaussian latent's argmax at time t, matches the copy at t - dt on the same
noise (`processes.duo.dcd_loss`, SPEC.md §4.6). Each round the copy is refreshed from the student,
so the gap the student bridges doubles. The loop is `distill`.
"""
from processes import duo
from training.run import distilled_for
from training.step import frozen, make_ema, optimizer_step, seed_step, trainable_copy, trained


def training_step(student, teacher, ema, chunks, dt, process, schedule, cfg, env):
    """One step of a DCD round on a batch (micro-batches of (x, t, u); DCD draws its own Gaussian
    noise, so u is not used), then the student's EMA."""
    def loss(x, t, u):
        return duo.dcd_loss(student.run, teacher, process, schedule, x, t, dt), {}
    value, _ = optimizer_step(student, chunks, loss, env, cfg.grad_clip)
    ema.update_parameters(student.module)
    return {"dcd": value}


def distill(teacher, process, run):
    """DCD's rounds: --rounds rounds of --iters steps, T_d = --start-steps. Returns the final
    table's row: (label, checkpoint, sampling steps) of the last round's student at L/16."""
    cfg, env = run.cfg, run.env
    schedule = duo.GaussianSchedule(process.vocab_size, *duo.DCD_GAMMA_RANGE)
    student = trained(trainable_copy(teacher), cfg.lr, cfg, env)
    teacher, ema = frozen(teacher), make_ema(student.module, cfg.ema)
    first_round, first_step = run.start([student], ema, model=student.module)
    if first_round > 0:  # a resumed run: round j's copy is round j - 1's student, as it was saved
        teacher.load_state_dict(run.read(f"round{first_round - 1}.pt")["model"])
    steps = max(1, cfg.seq_len // 16)
    for j in range(first_round, cfg.rounds):
        first = first_step if j == first_round else 0
        dt = duo.round_gap(j, cfg.start_steps)                             # 2^j / T_d
        recorded = distilled_for(steps, j, cfg.seq_len)        # the teacher's reference: L steps
        run.begin(f"dcd round {j} (dt = {dt:.4f})", first, passes=(1, 1))  # the student's pass, the copy's forward
        for step in range(first, cfg.iters):
            chunks = run.batch(step)
            seed_step(cfg, env, step)
            logs = training_step(student, teacher, ema, chunks, dt, process, schedule, cfg, env)
            run.after_step(step + 1, logs, **recorded)
        run.end_round(j, cfg.rounds, keep=True, **recorded)
        teacher.load_state_dict(student.module.state_dict())              # Duo: the copy takes the student's weights
    return [("DCD", run.out / "ckpt.pt", steps)]
