"""Distill a diffusion teacher into a few-step student: iterated SDTT, IDLM or DCD, on train.py's loop.

    python train.py --distill sdtt          # the same as: python distill.py --distill sdtt
    python train.py --distill idlm --teacher out/mdlm/ckpt.pt --judge out/ar/ckpt.pt
    python train.py --distill idlm --teacher out/uniform/ckpt.pt   # IDLM-Duo (a uniform-state teacher)
    python train.py --distill idlm --teacher out/uniform/ckpt.pt --tau 0.1   # IDLM-code's Gaussian variant
    python train.py --distill dcd           # Duo's DCD of the uniform default teacher (out/uniform)

The teacher is loaded (or, on a fresh machine, the embedded default is trained first), the
method's phases run on train.py's loop, and a final table gives GenPPL and entropy of the
teacher and of every student at the steps it was distilled for.
"""
import copy
import dataclasses
from functools import partial
from pathlib import Path

import torch.distributed as dist

import checkpoint
import dcd
import duo
import evaluate
import hub
import idlm
import sdtt
from cli import parse_config, run
from data import load_data, tokenizer_from_meta
from model import config_for, frozen
from samplers import sampler_name
from flops import step_flops_per_token
from train import (TrainConfig, check_config, ckpt_writer, existing_run, fit_micro_batch, make_ema, make_phase,
                   pretrain, resolve, resume, setup, train_steps, validation)

FULL_GPT2 = {"kind": "gpt2", "gpt2_ids": None}  # the data_meta of MDLM's OpenWebText models
PAPER_JUDGE = "gpt2-large"


# ----------------------------------------------------------------------------- teacher and judge

def ensure_default(kind, cfg, env):
    """The embedded teacher (kind "mdlm") or AR judge: reused when finished, else (re)trained."""
    default = TrainConfig(model=kind, data=cfg.data, size=cfg.size, vocab_size=cfg.vocab_size,
                          seq_len=cfg.seq_len, seed=cfg.seed, device=cfg.device, resume=True, process=cfg.process)
    default = resolve(default, config_for(cfg.size).n_embd)
    path = Path(default.out_dir) / "ckpt.pt"
    if path.exists() and checkpoint.read(path).get("finished"):
        return path
    if env.main:
        print(f"making the default {kind} model in {default.out_dir} first")
    return pretrain(default, env)


def load_teacher(cfg, env):
    """(teacher, its process, its checkpoint, its path, cfg with the teacher's vocabulary and L,
    or the shorter L the user gave)."""
    path = cfg.teacher or ensure_default("mdlm", cfg, env)
    teacher, ckpt = checkpoint.load_model(path, kinds=checkpoint.DIFFUSION_KINDS, device=env.device,
                                          process=cfg.process)
    if (cfg.seq_len or 0) > teacher.config.seq_len:
        raise ValueError(f"--seq-len {cfg.seq_len} is longer than the teacher's L = {teacher.config.seq_len}")
    vocab = ckpt["data_meta"].get("gpt2_ids")
    cfg = dataclasses.replace(cfg, seq_len=cfg.seq_len or teacher.config.seq_len,
                              vocab_size=len(vocab) + 1 if vocab else teacher.config.vocab_size)
    return teacher, checkpoint.process_of(ckpt), ckpt, str(path), cfg


def teacher_defaults(cfg, teacher_ckpt, env):
    """A teacher with GPT-2's full vocabulary is MDLM's OpenWebText setting: unless given, --data
    is openwebtext and --judge gpt2-large (L is the teacher's unless given). Said in one line."""
    if teacher_ckpt["data_meta"] != FULL_GPT2:
        return cfg
    filled = {name: value for name, value in (("data", "openwebtext"), ("judge", PAPER_JUDGE))
              if getattr(cfg, name) is None}
    if env.main:
        chosen = ", ".join(f"--{name} {value}" for name, value in filled.items())
        print(f"the teacher has GPT-2's full vocabulary (MDLM's OpenWebText setting): L = {cfg.seq_len}"
              + (f", {chosen} (give the flags to change them)" if chosen else ""))
    return dataclasses.replace(cfg, **filled)


def trainable_copy(model):
    return copy.deepcopy(model).train().requires_grad_(True)


# ----------------------------------------------------------------------------- the methods' phases

def sdtt_phases(cfg, env, student, process):
    """One phase whose loss is an `sdtt.RoundLoss`: the rounds swap its teacher and step size."""
    return [make_phase(cfg.divergence, student, cfg.lr, cfg,
                       lambda m: sdtt.RoundLoss(m, process, cfg.teacher_steps, cfg.divergence, cfg.teacher_sampler),
                       env)]


def idlm_phases(cfg, env, teacher, student, fake, process):
    """IDLM Algorithm 1: a fake-model step (eq. 10), then a student step (eq. 11). With --tau, the
    uniform process's latents are IDLM-code's Gaussian ones (duo.Curriculum: inexact, pitfall A5.4)."""
    process = duo.Curriculum(process, cfg.tau) if cfg.tau else process
    return [make_phase("fake", fake, cfg.fake_lr, cfg,
                       lambda m: lambda x, t, u: (idlm.fake_loss(m, student, x, t, u, process), {}), env),
            make_phase("student", student, cfg.lr, cfg,
                       lambda m: lambda x, t, u: idlm.student_loss(m, teacher, fake, x, t, u, process), env)]


# ----------------------------------------------------------------------------- SDTT rounds

def save_sdtt(point, j, cfg, env, step):
    """ckpt.pt every --ckpt-every steps. At the round's end, its student goes to round{j}.pt, and
    ckpt.pt becomes the start of round j+1: the point a killed run resumes from."""
    if not env.main:
        return
    out = Path(cfg.out_dir)
    if step < cfg.iters:
        checkpoint.save(point(step, j), out / "ckpt.pt")
        return
    checkpoint.save(point(step, j), out / f"round{j}.pt")
    last = j == cfg.rounds - 1
    checkpoint.save(point(step, j) if last else {**point(0, j), "round": j + 1}, out / "ckpt.pt")


def run_sdtt(cfg, env, data, teacher, process, teacher_ckpt, teacher_path):
    """Iterated SDTT (section 3.1): round j distills the round j-1 student (round 0: the
    pretrained teacher) into a student that samples with 1/n of its teacher's steps."""
    schedule = sdtt.step_schedule(cfg.start_steps, cfg.teacher_steps, cfg.rounds)
    student = trainable_copy(teacher)                         # Algorithm 2, line 4
    phases = sdtt_phases(cfg, env, student, process)
    ema = make_ema(student, cfg.ema)

    def point(step, j):
        return checkpoint.record("sdtt", teacher_ckpt["model_config"], process, data.meta(), dataclasses.asdict(cfg),
                                 student, ema, phases, step, j == cfg.rounds - 1 and step >= cfg.iters,
                                 teacher_path=teacher_path, **checkpoint.distilled_for(schedule[j + 1], j, schedule[j]))

    start_round, start_step, state = 0, 0, existing_run(cfg)
    if state is not None:
        start_round, start_step = state["round"], resume(state, student, phases, ema)
    teacher = frozen(teacher)
    for j in range(start_round, cfg.rounds):
        if j > 0:  # the teacher of round j is the student of round j-1, as saved at its end
            saved = checkpoint.read(Path(cfg.out_dir) / f"round{j - 1}.pt")
            teacher.load_state_dict(saved["ema" if cfg.ema_teacher else "model"])
        first_step = start_step if j == start_round else 0
        if cfg.reset_optimizer and first_step == 0:
            phases[0].optimizer.state.clear()
        phases[0].loss.start_round(teacher, schedule[j])
        train_steps(phases, ema, data, cfg, env, first_step, cfg.iters, partial(save_sdtt, point, j, cfg, env),
                    f"sdtt round {j} ({schedule[j]}->{schedule[j + 1]} steps)",
                    lambda: validation(ema.module, process, data, cfg, env),
                    step_flops_per_token(student, cfg.seq_len, "sdtt", cfg.teacher_steps))
        if env.world > 1:
            dist.barrier()  # round{j}.pt is written before anyone reads it
    return [(f"SDTT round {j}", Path(cfg.out_dir) / f"round{j}.pt", schedule[j + 1]) for j in range(cfg.rounds)]


# ----------------------------------------------------------------------------- IDLM

def run_idlm(cfg, env, data, teacher, process, teacher_ckpt, teacher_path):
    """IDLM Algorithm 1: alternate a fake-model step (eq. 10) and a student step (eq. 11)."""
    teacher = frozen(teacher)
    student, fake = trainable_copy(teacher), trainable_copy(teacher)
    phases = idlm_phases(cfg, env, teacher, student, fake, process)
    ema = make_ema(student, cfg.ema)
    start, state = 0, existing_run(cfg)
    if state is not None:
        fake.load_state_dict(state["fake"])
        start = resume(state, student, phases, ema)
    steps = sorted({max(1, cfg.seq_len // 16), max(1, cfg.seq_len // 32)}, reverse=True)  # L/16, L/32

    def point(step):
        return checkpoint.record("idlm", teacher_ckpt["model_config"], process, data.meta(), dataclasses.asdict(cfg),
                                 student, ema, phases, step, step >= cfg.iters, fake=fake.state_dict(),
                                 teacher_path=teacher_path, idlm_latent=idlm_latent(cfg),
                                 **checkpoint.distilled_for(steps[-1], 0, cfg.seq_len))  # the teacher's: L steps

    path = Path(cfg.out_dir) / "ckpt.pt"
    train_steps(phases, ema, data, cfg, env, start, cfg.iters, ckpt_writer(env, path, point), "idlm",
                lambda: validation(ema.module, process, data, cfg, env), step_flops_per_token(student, cfg.seq_len, "idlm"))
    return [("IDLM", path, s) for s in steps]


# ----------------------------------------------------------------------------- DCD

def run_dcd(cfg, env, data, teacher, process, teacher_ckpt, teacher_path):
    """Duo's DCD (dcd.py): round j trains the student against a frozen copy at gap dt = 2^j / T_d
    (T_d = --start-steps; default 512 at full size, L/2 on the CPU presets), then copies it over."""
    if existing_run(cfg) is not None:
        raise ValueError("--resume is not supported for --distill dcd: start again in a new --out-dir")
    base = cfg.start_steps or (512 if teacher.config.n_embd >= 768 else max(1, cfg.seq_len // 2))
    student = trainable_copy(teacher)
    phases = [make_phase("dcd", student, cfg.lr, cfg, lambda m: dcd.RoundLoss(m, process, base), env)]
    ema = make_ema(student, cfg.ema)
    teacher, path = frozen(teacher), Path(cfg.out_dir) / "ckpt.pt"
    steps = max(1, cfg.seq_len // 16)

    def point(step, j):
        return checkpoint.record("dcd", teacher_ckpt["model_config"], process, data.meta(), dataclasses.asdict(cfg),
                                 student, ema, phases, step, j == cfg.rounds - 1 and step >= cfg.iters, teacher_path=teacher_path,
                                 **checkpoint.distilled_for(steps, j, cfg.seq_len))  # the teacher's reference: L steps

    for j in range(cfg.rounds):
        if j > 0:  # Duo: the student is copied into the teacher at each round's start
            teacher.load_state_dict(student.state_dict())
        phases[0].loss.start_round(teacher, j)
        train_steps(phases, ema, data, cfg, env, 0, cfg.iters, ckpt_writer(env, path, partial(point, j=j)),
                    f"dcd round {j} (dt = {dcd.round_gap(j, base):.4f})",
                    lambda: validation(ema.module, process, data, cfg, env),
                    step_flops_per_token(student, cfg.seq_len, "sdtt", teacher_steps=1))  # + one teacher forward
    return [("DCD", path, steps)]


def idlm_latent(cfg):
    """What a student checkpoint records of the IDLM variant that trained it."""
    return f"gaussian-argmax, tau = {cfg.tau} (inexact, A5.4)" if cfg.tau else "exact relaxation"


def check_method(method, process, tau=None):
    """One clear line where a method (or --tau) does not apply to the teacher's process."""
    if tau and (method != "idlm" or process.kind != "uniform"):
        raise ValueError(f"--tau (Duo's Gaussian soft inputs) applies to pretraining with --process uniform and to "
                         f"--distill idlm of a uniform-state teacher (here: --distill {method}, "
                         f"a teacher of process {process.kind})")
    if method == "sdtt" and process.mask_id is None:
        raise ValueError(f"SDTT distills an absorbing (MDLM or SEDD) teacher; this teacher is {process.kind}: "
                         "use --distill idlm or dcd")
    if method == "dcd":
        dcd.check_uniform(process)


# ----------------------------------------------------------------------------- the final table

def print_final_table(cfg, env, judge_spec, judge, teacher, process, students, teacher_path, data_meta):
    """GenPPL and entropy of the teacher at L, L/4, L/16, L/32 steps and of each student at
    its steps; printed, and written to <out_dir>/table.md, with every sample scored in
    <out_dir>/samples.jsonl (evaluate.write_samples)."""
    L = cfg.seq_len
    entries = [("teacher", teacher, process, s) for s in (L, L // 4, L // 16, L // 32) if s >= 1]
    paths = [teacher_path] * len(entries)
    for label, path, steps in students:
        model, _ = checkpoint.load_model(path, device=env.device)
        entries.append((label, model, process, steps))
        paths.append(str(path))
    scored = []
    rows = evaluate.quality_rows(entries, judge, cfg.eval_samples, min(cfg.eval_samples, 32), L, cfg.seed, env.device,
                                 scored=scored)
    table = evaluate.markdown_table(rows, ["label", "steps", "genppl", "entropy", "nfe"])
    print(f"\nGenPPL (judge: {judge_spec}) and entropy, {cfg.eval_samples} samples of {L} tokens:\n{table}")
    (Path(cfg.out_dir) / "table.md").write_text(table + "\n")
    evaluate.write_samples(Path(cfg.out_dir) / "samples.jsonl", scored, tokenizer_from_meta(data_meta),
                           [{"checkpoint": path, "sampler": sampler_name(process=process)} for path in paths])


def distill(cfg, env):
    if cfg.distill == "dcd" and cfg.teacher is None:  # the default teacher of DCD is the uniform-state one
        cfg = dataclasses.replace(cfg, process=cfg.process or "uniform")
    teacher, process, teacher_ckpt, teacher_path, cfg = load_teacher(cfg, env)
    cfg = dataclasses.replace(cfg, process=hub.process_kind(teacher_ckpt))  # the teacher's, as recorded
    check_method(cfg.distill, process, cfg.tau)
    cfg = resolve(teacher_defaults(cfg, teacher_ckpt, env), teacher.config.n_embd)
    check_config(cfg, env.world)
    cfg = fit_micro_batch(cfg, env, teacher.config)
    data = load_data(cfg.data, cfg.vocab_size, cfg.seq_len)
    if data.meta() != teacher_ckpt["data_meta"]:
        raise ValueError(f"--data {cfg.data} does not use the vocabulary the teacher {teacher_path} was trained with")
    judge, judge_model = cfg.judge, None
    if cfg.eval_samples > 0:  # no final table, no judge (not even the default AR one, trained if missing)
        if judge is None:  # exact likelihood for synthetic data, else our AR model (made if missing)
            judge = "exact" if teacher_ckpt["data_meta"]["kind"] == "synthetic" else str(ensure_default("ar", cfg, env))
        # the judge is loaded (and so checked) before the first training step, not after the rounds
        judge_model = evaluate.load_judge(judge, teacher_ckpt["data_meta"], env.device) if env.main else None
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    run_method = {"sdtt": run_sdtt, "idlm": run_idlm, "dcd": run_dcd}[cfg.distill]
    students = run_method(cfg, env, data, teacher, process, teacher_ckpt, teacher_path)
    if env.main and cfg.eval_samples > 0:
        print_final_table(cfg, env, judge, judge_model, teacher, process, students, teacher_path,
                          teacher_ckpt["data_meta"])


def main():
    cfg = parse_config(TrainConfig, __doc__.split("\n\n")[0])
    if not cfg.distill:
        raise ValueError("give the method: --distill sdtt, idlm or dcd (pretraining is python train.py)")
    env = setup(cfg)
    distill(cfg, env)
    if env.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
