"""Train a masked-diffusion LM (MDLM), a SEDD or uniform-state teacher, or an AR baseline; with
`--distill`, distill a teacher (SDTT, IDLM, DCD) into a few-step student.

    python train.py                         # MDLM teacher on the embedded Shakespeare default
    python train.py --model ar              # the AR model (latency baseline and GenPPL judge)
    python train.py --distill sdtt          # iterated SDTT of the teacher (made first if missing)
    python train.py --distill idlm          # IDLM of the teacher
    python train.py --process uniform       # a Duo-style uniform-state teacher (out/uniform)
    python train.py --distill dcd           # Duo's DCD of that teacher
    torchrun --nproc_per_node=2 train.py    # DDP (gloo on CPU, NCCL on GPU)

This file owns the loop, the optimizers, checkpointing and logging. Every run is a method
(distill.Method: pretraining here, SDTT, IDLM and DCD in distill.py) of rounds and "phases" (an
optimizer and a loss each); `run` is the one skeleton for all of them: resume a killed run, then
each round's steps, each step running every phase once, with checkpoints and validation on schedule.
"""
import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import distill
from config import TrainConfig, check_config, resolve
from data import load_data
from diffusion import SCHEDULES, antithetic_times
from evaluate import eval_mode, load_judge
from loading import checkpoint
from model import build_model, config_for, next_token_nll
from plumbing import devices
from plumbing.cli import parse_config, run_command
from plumbing.flops import count_params, peak_flops, step_flops_per_token
from processes import duo
from processes.registry import PROCESSES


# ----------------------------------------------------------------------------- process set-up

@dataclass
class Env:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self):
        return self.rank == 0

    def autocast(self):
        return devices.autocast(self.device)


def setup(cfg):
    device = devices.pick(cfg.device)
    if "WORLD_SIZE" not in os.environ:
        return Env(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return Env(torch.device("cuda", local), rank, world)
    return Env(device, rank, world)


def fit_micro_batch(cfg, env, model_cfg):
    """--micro-batch-size when not given: the largest divisor of the per-process batch whose
    sequences fit in 60% of the free memory (devices.training_bytes_per_sequence), with
    gradient accumulation up to the global batch. 0 when the whole batch fits."""
    if cfg.micro_batch_size is not None:
        return cfg
    per_process = cfg.batch_size // env.world
    each = devices.training_bytes_per_sequence(model_cfg.vocab_size + 1, model_cfg.n_embd, model_cfg.n_layer,
                                               cfg.seq_len)
    fits = max(1, int(0.6 * devices.free_memory(env.device) // each))
    micro = max(d for d in range(1, min(fits, per_process) + 1) if per_process % d == 0)
    return dataclasses.replace(cfg, micro_batch_size=0 if micro == per_process else micro)


# ----------------------------------------------------------------------------- batches

def step_batch(data, cfg, env, step, split="train", stream=0):
    """This process's share of step `step`'s global batch, with its noise: the clean tokens x,
    antithetic times t and mask uniforms u. All are a function of (seed, step), drawn for the
    whole global batch and then sliced, so one process and N processes see the same numbers,
    and a resumed run continues exactly where the killed one was. Stream 0 is the step's batch
    (and seeds the draws inside the losses); stream k > 0 another batch of the same step, for a
    phase that trains on a batch of its own (IDLM's fake with --fake-batch fresh)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + (10**9 if split == "val" else 0)
                                      + 2 * 10**9 * stream)
    x = data.batch(split, cfg.batch_size, cfg.seq_len, g)
    t = antithetic_times(torch.rand((), generator=g).item(), cfg.batch_size)
    u = torch.rand(x.shape, generator=g)
    share = slice(env.rank * cfg.batch_size // env.world, (env.rank + 1) * cfg.batch_size // env.world)
    if stream == 0:
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + env.rank)  # draws inside the losses
    return tuple(v[share].to(env.device) for v in (x, t, u))


def micro_batches(batch, size):
    n = batch[0].shape[0]
    size = size or n
    return [tuple(v[i:i + size] for v in batch) for i in range(0, n, size)]


# ----------------------------------------------------------------------------- phases and one step

@dataclass
class Phase:
    """An optimizer stepped once per training step, or once per stream (`step_batch`) of `streams`:
    `loss(x, t, u) -> (loss, logs)` on a micro-batch."""
    name: str
    raw: torch.nn.Module             # the trained module
    model: torch.nn.Module           # the same, DDP-wrapped and/or compiled when asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss: Callable
    streams: tuple = (0,)


def make_phase(name, model, lr, loss_builder, cfg, env, streams=(0,)):
    """AdamW with linear warm-up then a constant rate; DDP-wrap the model when distributed.
    loss_builder(wrapped_model) returns the phase's loss function."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                  fused=env.device.type == "cuda")  # one kernel for all the parameters
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    wrapped = DistributedDataParallel(model) if env.world > 1 else model
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return Phase(name, model, wrapped, optimizer, scheduler, loss_builder(wrapped), streams)


def make_ema(model, decay):
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_step(phases, batches, env, grad_clip, ema):
    """One training step: for each phase and each of its streams, accumulate gradients over the
    micro-batches of that stream's batch (batches: stream -> micro-batches), clip, step the optimizer
    and its schedule; then update the EMA of the last phase's model. Returns the step's logs (each
    phase's mean loss, over its streams)."""
    logs = {}
    for phase in phases:
        total = 0.0
        for stream in phase.streams:
            chunks = batches[stream]
            phase.optimizer.zero_grad(set_to_none=True)
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                sync = contextlib.nullcontext() if last or env.world == 1 else phase.model.no_sync()
                with sync, env.autocast():
                    loss, extra = phase.loss(*chunk)
                    (loss / len(chunks)).backward()
                total += loss.item() / len(chunks) / len(phase.streams)
                for k, v in extra.items():
                    logs[k] = logs.get(k, 0.0) + v / len(chunks) / len(phase.streams)
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(phase.raw.parameters(), grad_clip)
            phase.optimizer.step()
            phase.scheduler.step()
        logs[phase.name] = total
    ema.update_parameters(phases[-1].raw)
    return logs


# ----------------------------------------------------------------------------- the loop

def train_steps(phases, ema, data, cfg, env, start, end, on_checkpoint, label, validate=None, flops_per_token=None,
                diagnose=None):
    """Steps start..end-1: one `train_step` on the step's batches; log, checkpoint and validate on
    schedule, the checkpoint first (a validation that fails loses no training). Every --log-every
    steps log.jsonl gets the interval's throughput (see `throughput`) and what diagnose(x, t, u)
    finds on the step's first micro-batch. Returns the tokens/s."""
    bar = tqdm(range(start, end), desc=label, disable=not env.main, dynamic_ncols=True)
    tokens_per_step, t0 = cfg.batch_size * cfg.seq_len, time.time()
    interval_start = (start, t0)
    devices.peak_memory(env.device, reset=True)
    for step in bar:
        streams = sorted({stream for phase in phases for stream in phase.streams}, reverse=True)  # 0 last: it seeds
        batches = {s: micro_batches(step_batch(data, cfg, env, step, stream=s), cfg.micro_batch_size) for s in streams}
        logs = train_step(phases, batches, env, cfg.grad_clip, ema)
        if not all(math.isfinite(v) for v in logs.values()):
            raise ValueError(f"loss is not finite at step {step} ({logs}); lower --lr")
        done = step + 1
        bar.set_postfix({**{k: f"{v:.4f}" for k, v in logs.items()},
                         "tok/s": f"{tokens_per_step * (done - start) / (time.time() - t0):.0f}"})
        if env.main and (done % cfg.log_every == 0 or done == end):
            steps, seconds = done - interval_start[0], time.time() - interval_start[1]
            found = diagnose(*batches[0][0]) if diagnose else {}
            log_line(cfg, {"label": label, "step": done, **logs, **found,
                           **throughput(tokens_per_step * steps / seconds, flops_per_token, env)})
            interval_start = (done, time.time())
        if done == end or done % cfg.ckpt_every == 0:
            on_checkpoint(done)
        if validate is not None and (done == end or (cfg.eval_every and done % cfg.eval_every == 0)):
            value = validate()
            if env.main:
                bar.write(f"{label} step {done}: val {value:.4f}")
                log_line(cfg, {"label": label, "step": done, "val": value, **logs})
    bar.close()
    return tokens_per_step * (end - start) / (time.time() - t0)


def throughput(tokens_per_s, flops_per_token, env):
    """tokens/s of the global batch, the model FLOPs utilisation (flops_per_token: a step's
    FLOPs per token, every network counted, plumbing/flops.py) against each device's
    peak (flops.peak_flops: bf16 on a GPU), and this process's peak memory in GB."""
    record = {"tokens_per_s": tokens_per_s, "peak_memory_gb": devices.peak_memory(env.device) / 1e9}
    if flops_per_token:
        peak, _ = peak_flops(env.device)
        record["mfu"] = flops_per_token * tokens_per_s / (peak * env.world)
    return record


def log_line(cfg, record):
    with open(Path(cfg.out_dir) / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


@torch.no_grad()
def validation(model, process, data, cfg, env):
    """Validation NELBO per token of a diffusion model (`process.nelbo`: its exp bounds the
    perplexity), or an AR model's next-token NLL (process None), on fixed val batches,
    --micro-batch-size rows at a time, averaged over the batches and the processes."""
    losses = []
    with eval_mode(model), env.autocast():
        for i in range(cfg.eval_batches):
            batch = step_batch(data, cfg, env, i, split="val")
            rows = batch[0].shape[0]
            losses.append(sum((next_token_nll(model, x) if process is None else
                               process.nelbo(model, x, t, u) / x.numel()).item() * x.shape[0] / rows
                              for x, t, u in micro_batches(batch, cfg.micro_batch_size)))
    value = torch.tensor(sum(losses) / len(losses), device=env.device)
    if env.world > 1:
        dist.all_reduce(value)
        value /= env.world
    return value.item()


# what a resumed run must share with the run it continues (--iters, --rounds, the schedule of logs and
# checkpoints, the learning rates and the device may change)
SAME_RUN = ("model", "distill", "process", "tau", "teacher", "data", "size", "schedule", "vocab_size", "seq_len",
            "batch_size", "seed", "teacher_steps", "start_steps", "divergence", "recipe", "idlm_gradient", "latent_draws",
            "noise_window", "fake_steps", "fake_batch", "loss_per", "teacher_weights")


def existing_run(cfg):
    """The checkpoint to resume from, or None; refuses to overwrite a run without --resume, and to
    resume one that another command line made (one line naming the first flag that differs)."""
    path = Path(cfg.out_dir) / "ckpt.pt"
    if not path.exists():
        return None
    if not cfg.resume:
        raise ValueError(f"{path} already exists: pass --resume to continue that run, or another --out-dir")
    state = checkpoint.read(path)
    recorded = state.get("train_config") or {}
    for name in SAME_RUN:
        if name in recorded and recorded[name] != getattr(cfg, name):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"--resume: {path} was trained with {flag} {recorded[name]}, not {getattr(cfg, name)}: "
                             f"give {flag} {recorded[name]}, or another --out-dir for a new run")
    return state


def save_point(point, method, j, cfg, env, step):
    """ckpt.pt every --ckpt-every steps. At the end of round j, a method that keeps its rounds (SDTT,
    DCD) writes its student to round{j}.pt, round j+1's teacher, and ckpt.pt becomes the start of
    round j+1: the point a killed run resumes from."""
    if not env.main:
        return
    out = Path(cfg.out_dir)
    if step < cfg.iters:
        checkpoint.save(point(step, j), out / "ckpt.pt")
        return
    last = j == method.rounds - 1
    if method.round_files:
        checkpoint.save(point(step, j), out / f"round{j}.pt")
    checkpoint.save(point(step, j) if last else {**point(0, j), "round": j + 1}, out / "ckpt.pt")


def run(method, cfg, env, data, process, model_config, **fields):
    """The one skeleton of every run: build the phases' optimizers and the student's EMA, resume
    where a killed run stopped, then --iters steps per round (method.start_round first). fields:
    checkpoint entries of the run (the teacher's path). Returns the last round's tokens/s."""
    phases = [make_phase(*spec, cfg, env, method.streams.get(spec[0], (0,))) for spec in method.phases]
    ema = make_ema(method.student, cfg.ema)
    start_round, start_step, state = 0, 0, existing_run(cfg)
    if state is not None:
        method.student.load_state_dict(state["model"])
        checkpoint.restore(state, phases, ema)
        method.restore(state)
        start_round, start_step = state.get("round", 0), state["step"]

    def point(step, j):
        return checkpoint.record(kind=method.kind, model_config=model_config, process=process, data_meta=data.meta(),
                                 train_config=dataclasses.asdict(cfg), model=method.student, ema=ema, phases=phases,
                                 step=step, finished=j == method.rounds - 1 and step >= cfg.iters,
                                 **fields, **method.fields(j))

    flops = step_flops_per_token(method.student, cfg.seq_len, *method.passes)
    tokens_per_s = 0.0
    for j in range(start_round, method.rounds):
        first = start_step if j == start_round else 0
        method.start_round(j, phases, cfg.out_dir, fresh=first == 0)
        tokens_per_s = train_steps(phases, ema, data, cfg, env, first, cfg.iters,
                                   partial(save_point, point, method, j, cfg, env), method.label(j),
                                   lambda: validation(ema.module, process, data, cfg, env), flops, method.diagnostics)
        if env.world > 1:
            dist.barrier()  # round{j}.pt is written before anyone reads it
    return tokens_per_s


def method_step(method, model, process, env, x, **flags):
    """The training step of `method` ("mdlm": pretraining under `process`; or a name of
    distill.METHODS, which distills `model`) on the clean batch x with one draw of its noise, built
    as `run` builds it, with the defaults of the model's width and `flags`: what bench.py times.
    Returns (the step as a function, the number of optimizers); a method that does not apply to the
    process is one ValueError."""
    batch = (x, antithetic_times(torch.rand(()).item(), x.shape[0]).to(x.device), torch.rand(x.shape, device=x.device))
    cfg = resolve(TrainConfig(distill=None if method == "mdlm" else method, **flags), model.config.n_embd)
    distill.check_method(cfg.distill, process)
    plan = Pretraining(cfg, model, process) if method == "mdlm" else distill.METHODS[method](cfg, model, process)
    phases = [make_phase(*spec, cfg, env, plan.streams.get(spec[0], (0,))) for spec in plan.phases]
    plan.start_round(0, phases, cfg.out_dir, fresh=True)
    ema = make_ema(plan.student, cfg.ema)
    batches = {stream: [batch] for phase in phases for stream in phase.streams}
    return (lambda: train_step(phases, batches, env, cfg.grad_clip, ema)), len(phases)


# ----------------------------------------------------------------------------- pretraining

class Pretraining(distill.Method):
    """The simplest method: one phase, one round, no teacher. Its loss is the process's (MDLM's
    NELBO, SEDD's score entropy, the UDLM loss, or with --tau Duo's curriculum) or, process None,
    the AR model's next-token NLL."""
    passes = (1, 0)

    def __init__(self, cfg, model, process):
        self.kind, self.student = cfg.model, model
        if process is None:
            loss = lambda m: lambda x, t, u: (next_token_nll(m, x), {})  # noqa: E731
        else:
            latents = duo.Curriculum(process, cfg.tau) if cfg.tau else process
            loss = lambda m: lambda x, t, u: (latents.loss(m, x, t, u), {})  # noqa: E731
        self.phases = [("loss", model, cfg.lr, loss)]
        self.name = "uniform" if process is not None and process.name == "uniform" else cfg.model

    def label(self, j):
        return self.name  # what the log and the progress bar say


def pretrain(cfg, env):
    """Pretrain a model of cfg.model under cfg.process. Returns the path of the finished checkpoint."""
    data = load_data(cfg.data, cfg.vocab_size, cfg.seq_len)
    name = "sedd" if cfg.model == "sedd" else cfg.process or "absorbing"
    process = None if cfg.model == "ar" else PROCESSES[name](data.vocab_size, SCHEDULES[cfg.schedule]())
    distill.check_method(None, process, cfg.tau)
    model_cfg = config_for(cfg.size, vocab_size=data.vocab_size, seq_len=cfg.seq_len, dropout=cfg.dropout,
                           time_conditioning=process is not None and process.time_conditioned)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, model_cfg).to(env.device)
    cfg = fit_micro_batch(cfg, env, model_cfg)
    method = Pretraining(cfg, model, process)
    if env.main:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        print(f"{method.name}: {count_params(model) / 1e6:.2f}M parameters, vocabulary {data.vocab_size}, "
              f"{cfg.iters} steps of {cfg.batch_size}x{cfg.seq_len} tokens on {env.device}"
              + (f", micro-batches of {cfg.micro_batch_size}" if cfg.micro_batch_size else ""))
    tokens_per_s = run(method, cfg, env, data, process, dataclasses.asdict(model_cfg))
    if env.main and tokens_per_s:
        achieved = step_flops_per_token(model, cfg.seq_len, *method.passes) * tokens_per_s
        peak, what = peak_flops(env.device)
        print(f"throughput: {tokens_per_s:.0f} tokens/s, {achieved / 1e9:.1f} GFLOP/s = "
              f"{100 * achieved / (peak * env.world):.0f}% of {what} ({peak / 1e9:.0f} GFLOP/s)")
    return Path(cfg.out_dir) / "ckpt.pt"


def ensure_default(kind, cfg, env):
    """The embedded teacher (kind "mdlm", of cfg.process) or AR judge: reused when finished, else
    (re)trained, with the run's data, size, vocabulary, L and seed."""
    default = TrainConfig(model=kind, data=cfg.data, size=cfg.size, vocab_size=cfg.vocab_size,
                          seq_len=cfg.seq_len, seed=cfg.seed, device=cfg.device, resume=True, process=cfg.process)
    default = resolve(default, config_for(cfg.size).n_embd)
    path = Path(default.out_dir) / "ckpt.pt"
    if path.exists() and checkpoint.read(path).get("finished"):
        return path
    if env.main:
        print(f"making the default {kind} model in {default.out_dir} first")
    return pretrain(default, env)


# ----------------------------------------------------------------------------- distillation

def distill_teacher(cfg, env):
    """--distill: load the teacher (the embedded one, made first if missing), check that the method
    applies to it, load the data and the judge before the first step, run the method, print the table."""
    if cfg.distill == "dcd" and cfg.teacher is None:  # the default teacher of DCD is the uniform-state one
        cfg = dataclasses.replace(cfg, process=cfg.process or "uniform")
    path = str(cfg.teacher or ensure_default("mdlm", cfg, env))
    teacher, process, teacher_ckpt, cfg = distill.load_teacher(path, cfg, env.device)
    distill.check_method(cfg.distill, process, cfg.tau)
    cfg = resolve(distill.teacher_defaults(cfg, teacher_ckpt, env.main), teacher.config.n_embd)
    check_config(cfg, env.world)
    cfg = fit_micro_batch(cfg, env, teacher.config)
    data = load_data(cfg.data, cfg.vocab_size, cfg.seq_len)
    if data.meta() != teacher_ckpt["data_meta"]:
        raise ValueError(f"--data {cfg.data} does not use the vocabulary the teacher {path} was trained with")
    judge, judge_model = cfg.judge, None
    if cfg.eval_samples > 0:  # no final table, no judge (not even the default AR one, trained if missing)
        if judge is None:  # exact likelihood for synthetic data, else our AR model (made if missing)
            judge = "exact" if teacher_ckpt["data_meta"]["kind"] == "synthetic" else str(ensure_default("ar", cfg, env))
        # the judge is loaded (and so checked) before the first training step, not after the rounds
        judge_model = load_judge(judge, teacher_ckpt["data_meta"], env.device) if env.main else None
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    method = distill.METHODS[cfg.distill](cfg, teacher, process)
    run(method, cfg, env, data, process, teacher_ckpt["model_config"], teacher_path=path)
    if env.main and cfg.eval_samples > 0:
        distill.final_table(cfg, env.device, judge, judge_model, teacher, process, method.students(cfg.out_dir),
                            path, teacher_ckpt["data_meta"])


def main():
    cfg = parse_config(TrainConfig, __doc__.split("\n\n")[0])
    env = setup(cfg)
    if cfg.distill:
        distill_teacher(cfg, env)
    else:
        cfg = resolve(cfg, config_for(cfg.size).n_embd)
        check_config(cfg, env.world)
        pretrain(cfg, env)
    if env.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_command(main)
