"""Train a masked-diffusion LM (MDLM), a SEDD or uniform-state teacher, or an AR baseline; with
`--distill`, distill a teacher (SDTT, IDLM, DCD) into a few-step student.

    python train.py                         # MDLM teacher on the embedded Shakespeare default
    python train.py --model ar              # the AR model (latency baseline and GenPPL judge)
    python train.py --distill sdtt          # iterated SDTT of the teacher (made first if missing)
    python train.py --distill idlm          # IDLM of the teacher
    python train.py --process uniform       # a Duo-style uniform-state teacher (out/uniform)
    python train.py --distill dcd           # Duo's DCD of that teacher
    torchrun --nproc_per_node=2 train.py    # DDP (gloo on CPU, NCCL on GPU)

The file a reader opens first: the command line, the data, the model, the pretraining loop, and the
hand-off to a distillation, whose loop lives with its algorithm (sdtt.py, idlm.py, dcd.py). What
every loop calls (an optimizer step, checkpoints and resume, the log, validation) is training/.
"""
import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist

import dcd
import idlm
import mmd
import sdtt
from config import TrainConfig, check_config, check_method, describe, from_teacher, resolve
from data import load_data
from diffusion import SCHEDULES
from evaluate import final_table, load_judge
from loading import checkpoint
from model import build_model, config_for, next_token_nll, size_of
from plumbing.cli import parse_config, run_command
from plumbing.flops import count_params, peak_flops, step_flops_per_token
from processes import duo
from processes.registry import PROCESSES
from training.run import Run
from training.step import fit_micro_batch, make_ema, optimizer_step, seed_step, setup, trained

DISTILL = {"sdtt": sdtt.distill, "idlm": idlm.distill, "dcd": dcd.distill, "mmd": mmd.distill}  # each method's loop


# ----------------------------------------------------------------------------- pretraining

def pretraining_loss(model, latents, x, t, u):
    """The loss a model is pretrained with, per token: the process's (MDLM's NELBO, SEDD's score
    entropy, the UDLM loss, or with --tau Duo's curriculum) on x [N, L] noised at times t [N] with
    mask uniforms u [N, L]; or, latents None, the AR model's next-token NLL."""
    return next_token_nll(model, x) if latents is None else latents.loss(model, x, t, u)


def training_step(net, ema, chunks, latents, cfg, env):
    """One optimizer step of the pretraining loss on a batch (micro-batches of (x, t, u)), then the EMA."""
    def loss(x, t, u):
        return pretraining_loss(net.run, latents, x, t, u), {}
    value, _ = optimizer_step(net, chunks, loss, env, cfg.grad_clip)
    ema.update_parameters(net.module)
    return {"loss": value}


def pretraining_loop(model, latents, run, label):
    """--iters steps of the pretraining loss; the EMA of the weights is what is sampled. Returns tokens/s."""
    cfg, env = run.cfg, run.env
    net, ema = trained(model, cfg.lr, cfg, env), make_ema(model, cfg.ema)
    _, first = run.start([net], ema, model=model)                          # resume a killed run
    run.begin(label, first, passes=(1, 0))
    for step in range(first, cfg.iters):
        chunks = run.batch(step)                   # x from the data, antithetic times t, the masks' uniforms u
        seed_step(cfg, env, step)                  # the draws inside the loss: a function of (seed, step)
        logs = training_step(net, ema, chunks, latents, cfg, env)
        run.after_step(step + 1, logs)             # the log line, ckpt.pt and validation, on schedule
    return run.end_round(0)                        # the finished ckpt.pt, then validation


def pretrain(cfg, env):
    """Pretrain a model of kind --model under --process. Returns the path of the finished checkpoint."""
    data = load_data(cfg.data, cfg.vocab_size, cfg.seq_len)
    name = "sedd" if cfg.model == "sedd" else cfg.process or "absorbing"
    process = None if cfg.model == "ar" else PROCESSES[name](data.vocab_size, SCHEDULES[cfg.schedule]())
    check_method(None, process, cfg.tau)
    model_cfg = config_for(cfg.size, vocab_size=data.vocab_size, seq_len=cfg.seq_len, dropout=cfg.dropout,
                           time_conditioning=process is not None and process.time_conditioned)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, model_cfg).to(env.device)
    cfg = fit_micro_batch(cfg, env, model_cfg)
    label = "uniform" if process is not None and process.name == "uniform" else cfg.model
    if env.main:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        print(describe(cfg))
        print(f"{label}: {count_params(model) / 1e6:.2f}M parameters, vocabulary {data.vocab_size}, "
              f"{cfg.iters} steps of {cfg.batch_size}x{cfg.seq_len} tokens on {env.device}"
              + (f", micro-batches of {cfg.micro_batch_size}" if cfg.micro_batch_size else ""))
    latents = duo.Curriculum(process, cfg.tau) if cfg.tau else process
    run = Run(cfg, env, data, process, cfg.model, dataclasses.asdict(model_cfg))
    tokens_per_s = pretraining_loop(model, latents, run, label)
    path = Path(cfg.out_dir) / "ckpt.pt"
    if env.main:
        achieved = step_flops_per_token(model, cfg.seq_len, 1, 0) * tokens_per_s
        peak, what = peak_flops(env.device)
        print(f"throughput: {tokens_per_s:.0f} tokens/s, {achieved / 1e9:.1f} GFLOP/s = "
              f"{100 * achieved / (peak * env.world):.0f}% of {what} ({peak / 1e9:.0f} GFLOP/s)")
        print(f"wrote {path} (log: {path.parent / 'log.jsonl'}); next: python sample.py --ckpt {path}")
    return path


def make_default(kind, cfg, env):
    """The default teacher (kind "mdlm", of cfg.process) or AR judge of a distillation given none:
    reused when finished, else trained first with the run's data, size, vocabulary, L and seed and
    its own preset's steps and batch, as its one line says."""
    default = resolve(TrainConfig(model=kind, data=cfg.data, size=cfg.size, vocab_size=cfg.vocab_size,
                                  seq_len=cfg.seq_len, seed=cfg.seed, device=cfg.device, resume=True,
                                  process=cfg.process))
    path = Path(default.out_dir) / "ckpt.pt"
    if path.exists() and checkpoint.read(path).get("finished"):
        return path
    if env.main:
        what = "AR judge" if kind == "ar" else f"{default.process} teacher"
        small = f"python train.py{' --model ar' if kind == 'ar' else ''} --size micro --iters 50"
        print(f"making the default {what} first ({default.size}, {default.iters} steps of {default.batch_size}x"
              f"{default.seq_len} tokens) in {default.out_dir}; for a quick run, make a small one first: {small}")
    return pretrain(default, env)


# ----------------------------------------------------------------------------- distillation

def judge_for(cfg, teacher_ckpt, env):
    """The final table's judge (spec, model), loaded (and so checked) before the first training step:
    --judge, or the exact likelihood of synthetic data, or the default AR model (made first if
    missing). (None, None) without a table (--eval-samples 0)."""
    if cfg.eval_samples == 0:
        return None, None
    judge = cfg.judge
    if judge is None:
        judge = "exact" if teacher_ckpt["data_meta"]["kind"] == "synthetic" else str(make_default("ar", cfg, env))
    return judge, (load_judge(judge, teacher_ckpt["data_meta"], env.device) if env.main else None)


def distill(cfg, env):
    """--distill: load the teacher (the default one, made first if none is given), fill the method's
    flags from it, load the data and the judge, run the method's loop, then the final table."""
    if cfg.distill == "dcd" and cfg.teacher is None:  # the default teacher of DCD is the uniform-state one
        cfg = dataclasses.replace(cfg, process=cfg.process or "uniform")
    path = str(cfg.teacher or make_default("mdlm", cfg, env))
    teacher, teacher_ckpt = checkpoint.load_model(path, kinds=checkpoint.DIFFUSION_KINDS, device=env.device,
                                                  process=cfg.process, weights=cfg.teacher_weights or "ema")
    process = checkpoint.process_of(teacher_ckpt)
    check_method(cfg.distill, process, cfg.tau)
    cfg = resolve(from_teacher(cfg, teacher_ckpt, process, env.main), size_of(teacher.config))
    check_config(cfg, env.world)
    cfg = fit_micro_batch(cfg, env, teacher.config)
    data = load_data(cfg.data, cfg.vocab_size, cfg.seq_len)
    if data.meta() != teacher_ckpt["data_meta"]:
        older = " (the older vocabulary with <unk>: train the teacher again)" if teacher_ckpt["data_meta"].get("gpt2_ids") else ""
        raise ValueError(f"--data {cfg.data} does not use the vocabulary the teacher {path} was trained with{older}")
    judge, judge_model = judge_for(cfg, teacher_ckpt, env)
    if env.main:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        print(describe(cfg))
        print(f"{cfg.distill}: distilling {path} ({teacher_ckpt['kind']}, {process.name} process, "
              f"{count_params(teacher) / 1e6:.2f}M parameters) into {cfg.out_dir}")
    run = Run(cfg, env, data, process, cfg.distill, teacher_ckpt["model_config"], {"teacher_path": path})
    students = DISTILL[cfg.distill](teacher, process, run)
    if env.main and cfg.eval_samples > 0:
        final_table(cfg, env.device, judge, judge_model, teacher, process, students, path, teacher_ckpt["data_meta"])
    if env.main:
        print(f"wrote {', '.join(str(p) for p in dict.fromkeys(p for _, p, _ in students))} (log: "
              f"{run.out / 'log.jsonl'}); next: python sample.py --ckpt {students[-1][1]}")


def main(argv=None):
    cfg = parse_config(TrainConfig, __doc__.split("\n\n")[0], argv)
    env = setup(cfg.device)
    if cfg.distill:
        distill(cfg, env)
    else:
        cfg = resolve(cfg)
        check_config(cfg, env.world)
        pretrain(cfg, env)
    if env.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_command(main)
