"""Train a masked-diffusion LM (MDLM) or an AR baseline; `--distill` distills a teacher.

    python train.py                         # MDLM teacher on the embedded Shakespeare default
    python train.py --model ar              # the AR model (latency baseline and GenPPL judge)
    python train.py --distill sdtt          # iterated SDTT of a teacher (distill.py; made first if missing)
    python train.py --distill idlm          # IDLM of a teacher
    python train.py --process uniform       # a Duo-style uniform-state teacher (out/uniform)
    python train.py --distill dcd --process uniform   # Duo's DCD of that teacher
    torchrun --nproc_per_node=2 train.py    # DDP (gloo on CPU, NCCL on GPU)

This file owns the loop, the optimizers, checkpointing and logging, and pretraining. Every
method is a list of "phases" (an optimizer and a loss); the loop runs each phase once per
step: MDLM, AR and SDTT have one, IDLM two (fake model, then student). Distillation (teacher
loading, SDTT rounds, IDLM, the final table) is orchestrated in distill.py, on this loop.
"""
import contextlib
import dataclasses
import json
import math
import os
import runpy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import checkpoint
import devices
import duo
import sdtt
from cli import flag, parse_config, run
from data import load_data
from diffusion import SCHEDULES, antithetic_times
from evaluate import next_token_nll, validation_loss
from flops import peak_flops, step_flops_per_token
from model import build_model, config_for, count_params
from processes import PROCESSES


@dataclass
class TrainConfig:
    model: str = flag("mdlm", "what to pretrain: a masked diffusion LM (MDLM), a SEDD score model (absorbing, "
                              "time-conditioned) or an AR model", choices=["mdlm", "sedd", "ar"])
    distill: Optional[str] = flag(None, "distill a diffusion teacher instead of pretraining (distill.py)",
                                  choices=["sdtt", "idlm", "dcd"])
    process: Optional[str] = flag(None, "diffusion process: absorbing (MDLM; the default) or uniform (Duo); "
                                        "--model sedd is absorbing with SEDD's score parameterization. With "
                                        "--teacher: what a bare state dict is (default absorbing); a checkpoint "
                                        "that records the other process is refused",
                                  choices=["absorbing", "uniform"])
    tau: Optional[float] = flag(None, "uniform process: train with Duo's curriculum, soft inputs softmax(w/tau) "
                                      "(Duo: 1e-3); with --distill idlm: IDLM-code's Gaussian-argmax variant "
                                      "(inexact; IDLM-code: 0.1); default: the discrete UDLM loss", above=0)
    teacher: Optional[str] = flag(None, "teacher: our checkpoint, MDLM's or Duo's weights as a Hugging Face folder "
                                        "or hub name (kuleshov-group/mdlm-owt, s-sahoo/duo), a Lightning .ckpt or a "
                                        "state dict (Duo's: with --process uniform); "
                                        "default: the embedded teacher, trained first if missing")
    data: Optional[str] = flag(None, "shakespeare | synthetic | openwebtext | path(s) to text files, comma-separated "
                                     "(default: shakespeare; openwebtext for a teacher with GPT-2's full vocabulary)")
    size: str = flag("tiny", "model size preset: micro, tiny, mini (CPU) or small ... 8B (SDTT Table 2)")
    schedule: str = flag("loglinear", "noise schedule of a pretrained diffusion model", choices=list(SCHEDULES))
    vocab_size: int = flag(4096, "compacted vocabulary for small corpora (most frequent GPT-2 tokens + <unk>)",
                           at_least=3)
    seq_len: Optional[int] = flag(None, "sequence length L (default: 128; a distillation: the teacher's L, "
                                        "or shorter when given)", at_least=2)
    batch_size: Optional[int] = flag(None, "global batch (all processes, all accumulation steps)", at_least=1)
    micro_batch_size: Optional[int] = flag(None, "per-process micro-batch (0 = the whole batch at once); default: "
                                                 "the largest that fits in the free memory", at_least=0)
    iters: Optional[int] = flag(None, "optimizer steps (per round for SDTT)", at_least=1)
    lr: Optional[float] = flag(None, "peak learning rate (the student's, for IDLM)", above=0)
    fake_lr: Optional[float] = flag(None, "IDLM: learning rate of the fake model (default: --lr)", above=0)
    warmup: Optional[int] = flag(None, "linear warm-up steps, then constant", at_least=0)
    weight_decay: float = flag(0.0, "AdamW weight decay", at_least=0)
    grad_clip: float = flag(1.0, "clip the gradient norm to this (0 = off)", at_least=0)
    ema: Optional[float] = flag(None, "EMA decay of the weights used for evaluation and sampling, in [0, 1)", at_least=0)
    dropout: Optional[float] = flag(None, "dropout (MDLM: 0.1; the CPU presets: 0)", at_least=0)
    eval_every: int = flag(200, "validate every N steps (0 = only at the end)", at_least=0)
    eval_batches: int = flag(4, "validation batches", at_least=1)
    log_every: int = flag(10, "write tokens/s, MFU and peak memory to <out-dir>/log.jsonl every N steps", at_least=1)
    ckpt_every: int = flag(100, "write the checkpoint every N steps", at_least=1)
    out_dir: Optional[str] = flag(None, "output folder (default: out/<mdlm|sedd|ar|sdtt|idlm>)")
    resume: bool = flag(False, "continue the run in --out-dir from its checkpoint")
    seed: int = flag(0, "random seed; a step's batch and noise are a function of (seed, step)")
    device: str = flag("auto", "where to train", choices=devices.DEVICES)
    compile: bool = flag(False, "torch.compile the trained model")
    # SDTT (paper section 3.1 and appendix C)
    rounds: Optional[int] = flag(None, "SDTT rounds (default: down to L/32 steps on CPU presets, 7 for full size)",
                                 at_least=1)
    start_steps: Optional[int] = flag(None, "SDTT: sampling steps m of the round-0 teacher (default: L on CPU "
                                            "presets, 1024)", at_least=1)
    teacher_steps: int = flag(2, "SDTT: teacher steps distilled into one student step (2, 4, 8)", at_least=1)
    divergence: Optional[str] = flag(None, "SDTT divergence (default: reverse_kl, the paper's, for full size; "
                                           "mse on the CPU presets, see README)", choices=list(sdtt.DIVERGENCES))
    teacher_sampler: str = flag("ancestral", "SDTT: sampler that makes the targets", choices=list(sdtt.TEACHER_SAMPLERS))
    reset_optimizer: bool = flag(False, "SDTT ablation: a fresh optimizer each round")
    ema_teacher: bool = flag(False, "SDTT ablation: the EMA weights teach the next round (EMA decay 0.999)")
    # the table printed at the end of a distillation
    judge: Optional[str] = flag(None, "GenPPL judge: our AR checkpoint (default out/ar/ckpt.pt, trained if "
                                      "missing; gpt2-large for a teacher with GPT-2's full vocabulary), 'exact' "
                                      "for synthetic data, or a Hugging Face model (folder or hub name)")
    eval_samples: int = flag(64, "samples per row of the final GenPPL/entropy table (0: no table)", at_least=0)


# Paper settings for full-size models; the CPU presets scale them down to minutes on two cores.
DEFAULTS = {
    ("mdlm", "paper"): dict(batch_size=512, iters=1_000_000, lr=3e-4, warmup=2500, ema=0.9999, dropout=0.1),
    ("ar", "paper"): dict(batch_size=512, iters=1_000_000, lr=3e-4, warmup=2500, ema=0.9999, dropout=0.1),
    ("sdtt", "paper"): dict(batch_size=128, iters=10_000, lr=6e-5, warmup=500, ema=0.9999, rounds=7, start_steps=1024,
                            divergence="reverse_kl"),
    ("idlm", "paper"): dict(batch_size=512, iters=10_000, lr=1e-6, warmup=2500, ema=0.9999),
    ("mdlm", "cpu"): dict(batch_size=32, iters=800, lr=1e-3, warmup=50, ema=0.99, dropout=0.0),
    ("sedd", "paper"): dict(batch_size=512, iters=1_000_000, lr=3e-4, warmup=2500, ema=0.9999, dropout=0.1),  # as MDLM
    ("sedd", "cpu"): dict(batch_size=32, iters=800, lr=1e-3, warmup=50, ema=0.99, dropout=0.0),
    ("ar", "cpu"): dict(batch_size=32, iters=300, lr=1e-3, warmup=30, ema=0.99, dropout=0.0),
    # SDTT on CPU: the MSE of log-probs (B.3). The reverse KL's optimum over the 7-minute teacher's targets is
    # *flatter* than the teacher (README, "Where this differs"); the MSE sharpens, as in the paper's Figure 6.
    ("sdtt", "cpu"): dict(batch_size=32, iters=80, lr=3e-4, warmup=10, ema=0.9, divergence="mse"),
    ("idlm", "cpu"): dict(batch_size=32, iters=250, lr=1e-4, warmup=20, ema=0.99),
    # DCD (Duo's consistency distillation, dcd.py): iters per round, the teacher copied each round
    ("dcd", "paper"): dict(batch_size=128, iters=10_000, lr=6e-5, warmup=500, ema=0.999, rounds=5),
    ("dcd", "cpu"): dict(batch_size=32, iters=60, lr=3e-4, warmup=10, ema=0.9, rounds=3),
}


SEQ_LEN = 128  # L of the embedded default


def resolve(cfg, width):
    """Fill the flags left at None from DEFAULTS, by method and by scale (full size from 768 wide)."""
    method = cfg.distill or cfg.model
    cfg = dataclasses.replace(cfg, process=cfg.process or "absorbing")
    table = DEFAULTS[(method, "paper" if width >= 768 else "cpu")]
    filled = {k: v for k, v in table.items() if getattr(cfg, k) is None}
    if cfg.seq_len is None:
        cfg = dataclasses.replace(cfg, seq_len=SEQ_LEN)
    if cfg.data is None:
        filled["data"] = "shakespeare"
    if method == "sdtt" and cfg.ema_teacher and cfg.ema is None:
        filled["ema"] = 0.999
    if method == "sdtt" and width < 768:
        filled.setdefault("start_steps", cfg.start_steps or cfg.seq_len)
        if cfg.rounds is None:  # down to L/32 steps
            filled["rounds"] = max(1, round(math.log(32, cfg.teacher_steps)))
    cfg = dataclasses.replace(cfg, **filled)
    if cfg.fake_lr is None:
        cfg = dataclasses.replace(cfg, fake_lr=cfg.lr)
    if cfg.out_dir is None:
        name = "uniform" if method == "mdlm" and cfg.process == "uniform" else method
        cfg = dataclasses.replace(cfg, out_dir=f"out/{name}")
    return cfg


def check_config(cfg, world):
    """What the flags' own bounds cannot say: how the batch splits over processes and micro-batches."""
    if cfg.batch_size < world or cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the {world} processes")
    if cfg.micro_batch_size and (cfg.batch_size // world) % cfg.micro_batch_size:  # None: fit_micro_batch decides
        raise ValueError(f"--micro-batch-size {cfg.micro_batch_size} must divide the per-process batch "
                         f"{cfg.batch_size // world}")
    if cfg.ema >= 1:
        raise ValueError("--ema must lie in [0, 1)")
    if cfg.model == "sedd" and cfg.process == "uniform":
        raise ValueError("--model sedd is SEDD on the absorbing graph: drop --process uniform")


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


# ----------------------------------------------------------------------------- batches

def step_batch(data, cfg, env, step, split="train"):
    """This process's share of step `step`'s global batch, with its noise: the clean tokens x,
    antithetic times t and mask uniforms u. All are a function of (seed, step), drawn for the
    whole global batch and then sliced, so one process and N processes see the same numbers,
    and a resumed run continues exactly where the killed one was."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + (10**9 if split == "val" else 0))
    x = data.batch(split, cfg.batch_size, cfg.seq_len, g)
    t = antithetic_times(torch.rand((), generator=g).item(), cfg.batch_size)
    u = torch.rand(x.shape, generator=g)
    share = slice(env.rank * cfg.batch_size // env.world, (env.rank + 1) * cfg.batch_size // env.world)
    torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + env.rank)  # draws inside the losses
    return tuple(v[share].to(env.device) for v in (x, t, u))


def micro_batches(batch, size):
    n = batch[0].shape[0]
    size = size or n
    return [tuple(v[i:i + size] for v in batch) for i in range(0, n, size)]


# ----------------------------------------------------------------------------- phases and one step

@dataclass
class Phase:
    """One optimizer step per training step: `loss(x, t, u) -> (loss, logs)` on a micro-batch."""
    name: str
    raw: torch.nn.Module             # the trained module
    model: torch.nn.Module           # the same, DDP-wrapped and/or compiled when asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss: Callable


def make_phase(name, model, lr, cfg, loss_builder, env):
    """AdamW with linear warm-up then a constant rate; DDP-wrap the model when distributed.
    loss_builder(wrapped_model) returns the phase's loss function."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                  fused=env.device.type == "cuda")  # one kernel for all the parameters
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    wrapped = DistributedDataParallel(model) if env.world > 1 else model
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return Phase(name, model, wrapped, optimizer, scheduler, loss_builder(wrapped))


def pretrain_phases(cfg, env, model, process):
    """MDLM's NELBO (SDTT eq. 3), or (process None) the AR model's next-token NLL."""
    if process is None:
        loss = lambda m: lambda x, t, u: (next_token_nll(m, x), {})
    else:
        loss = lambda m: lambda x, t, u: (process.loss(m, x, t, u), {})
    return [make_phase("loss", model, cfg.lr, cfg, loss, env)]


def make_ema(model, decay):
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_step(phases, chunks, env, grad_clip, ema):
    """One training step: for each phase, accumulate gradients over the micro-batches, clip,
    step the optimizer and its schedule; then update the EMA of the last phase's model.
    Returns the step's logs (each phase's mean loss)."""
    logs = {}
    for phase in phases:
        phase.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last or env.world == 1 else phase.model.no_sync()
            with sync, env.autocast():
                loss, extra = phase.loss(*chunk)
                (loss / len(chunks)).backward()
            total += loss.item() / len(chunks)
            for k, v in extra.items():
                logs[k] = logs.get(k, 0.0) + v / len(chunks)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(phase.raw.parameters(), grad_clip)
        phase.optimizer.step()
        phase.scheduler.step()
        logs[phase.name] = total
    ema.update_parameters(phases[-1].raw)
    return logs


# ----------------------------------------------------------------------------- the loop

def train_steps(phases, ema, data, cfg, env, start, end, on_checkpoint, label, validate=None, flops_per_token=None):
    """Steps start..end-1: one `train_step` on the step's batch; log, checkpoint and validate on
    schedule, the checkpoint first (a validation that fails loses no training). Every --log-every
    steps log.jsonl gets the interval's throughput (see `throughput`). Returns the tokens/s."""
    bar = tqdm(range(start, end), desc=label, disable=not env.main, dynamic_ncols=True)
    tokens_per_step, t0 = cfg.batch_size * cfg.seq_len, time.time()
    interval_start = (start, t0)
    devices.peak_memory(env.device, reset=True)
    for step in bar:
        chunks = micro_batches(step_batch(data, cfg, env, step), cfg.micro_batch_size)
        logs = train_step(phases, chunks, env, cfg.grad_clip, ema)
        if not all(math.isfinite(v) for v in logs.values()):
            raise ValueError(f"loss is not finite at step {step} ({logs}); lower --lr")
        done = step + 1
        bar.set_postfix({**{k: f"{v:.4f}" for k, v in logs.items()},
                         "tok/s": f"{tokens_per_step * (done - start) / (time.time() - t0):.0f}"})
        if env.main and (done % cfg.log_every == 0 or done == end):
            steps, seconds = done - interval_start[0], time.time() - interval_start[1]
            log_line(cfg, {"label": label, "step": done, **logs,
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
    FLOPs per token, every network counted, flops.step_flops_per_token) against each device's
    peak (flops.peak_flops: bf16 on a GPU), and this process's peak memory in GB."""
    record = {"tokens_per_s": tokens_per_s, "peak_memory_gb": devices.peak_memory(env.device) / 1e9}
    if flops_per_token:
        peak, _ = peak_flops(env.device)
        record["mfu"] = flops_per_token * tokens_per_s / (peak * env.world)
    return record


def log_line(cfg, record):
    with open(Path(cfg.out_dir) / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def validation(model, process, data, cfg, env):
    """Validation NELBO per token (diffusion) or NLL per token (AR, process None) on fixed val
    batches, averaged over the processes."""
    batches = (step_batch(data, cfg, env, i, split="val") for i in range(cfg.eval_batches))
    with env.autocast():
        value = torch.tensor(validation_loss(model, process, batches, cfg.micro_batch_size), device=env.device)
    if env.world > 1:
        dist.all_reduce(value)
        value /= env.world
    return value.item()


def existing_run(cfg):
    """The checkpoint to resume from, or None; refuses to overwrite a run without --resume."""
    path = Path(cfg.out_dir) / "ckpt.pt"
    if not path.exists():
        return None
    if not cfg.resume:
        raise ValueError(f"{path} already exists: pass --resume to continue that run, or another --out-dir")
    return checkpoint.read(path)


def resume(state, model, phases, ema):
    """Load a checkpoint's weights and training state into this run; returns its step."""
    model.load_state_dict(state["model"])
    checkpoint.restore(state, phases, ema)
    return state["step"]


def ckpt_writer(env, path, point):
    """A callback that writes point(step) atomically from the main process."""
    def write(step):
        if env.main:
            checkpoint.save(point(step), path)
    return write


# ----------------------------------------------------------------------------- pretraining

def pretrain(cfg, env):
    """MDLM (SDTT eq. 3) or AR pretraining. Returns the path of the finished checkpoint."""
    data = load_data(cfg.data, cfg.vocab_size, cfg.seq_len)
    # MDLM's models are not time-conditioned; SEDD's and Duo's (the uniform process) are
    kind = "sedd" if cfg.model == "sedd" else cfg.process or "absorbing"
    process = None if cfg.model == "ar" else PROCESSES[kind](data.vocab_size, SCHEDULES[cfg.schedule]())
    model_cfg = config_for(cfg.size, vocab_size=data.vocab_size, seq_len=cfg.seq_len, dropout=cfg.dropout,
                           time_conditioning=process is not None and process.time_conditioned)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, model_cfg).to(env.device)
    cfg = fit_micro_batch(cfg, env, model_cfg)
    phases = pretrain_phases(cfg, env, model, duo.Curriculum(process, cfg.tau) if cfg.tau else process)
    ema = make_ema(model, cfg.ema)
    path, start, state = Path(cfg.out_dir) / "ckpt.pt", 0, existing_run(cfg)
    if state is not None:
        start = resume(state, model, phases, ema)
    label = "uniform" if kind == "uniform" and cfg.model == "mdlm" else cfg.model  # what the log and bar say
    if env.main:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        print(f"{label}: {count_params(model) / 1e6:.2f}M parameters, vocabulary {data.vocab_size}, "
              f"{cfg.iters} steps of {cfg.batch_size}x{cfg.seq_len} tokens on {env.device}"
              + (f", micro-batches of {cfg.micro_batch_size}" if cfg.micro_batch_size else ""))

    def point(step):
        return checkpoint.record(cfg.model, dataclasses.asdict(model_cfg), process, data.meta(),
                                 dataclasses.asdict(cfg), model, ema, phases, step, step >= cfg.iters)

    tokens_per_s = train_steps(phases, ema, data, cfg, env, start, cfg.iters, ckpt_writer(env, path, point),
                               label, lambda: validation(ema.module, process, data, cfg, env),
                               step_flops_per_token(model, cfg.seq_len, cfg.model))
    if env.main and start < cfg.iters:
        report_throughput(model, cfg, env, tokens_per_s)
    return path


def report_throughput(model, cfg, env, tokens_per_s):
    """Training tokens/s and achieved FLOP/s against the device's peak (flops.peak_flops)."""
    achieved = step_flops_per_token(model, cfg.seq_len, cfg.model) * tokens_per_s
    peak, what = peak_flops(env.device)
    print(f"throughput: {tokens_per_s:.0f} tokens/s, {achieved / 1e9:.1f} GFLOP/s = "
          f"{100 * achieved / (peak * env.world):.0f}% of {what} ({peak / 1e9:.0f} GFLOP/s)")


def main():
    cfg = parse_config(TrainConfig, __doc__.split("\n\n")[0])
    if cfg.distill:
        # Distillation is orchestrated one layer up, in distill.py, on this file's loop. The
        # command is handed over by path, so that this file imports nothing above it.
        runpy.run_path(str(Path(__file__).with_name("distill.py")), run_name="__main__")
        return
    env = setup(cfg)
    cfg = resolve(cfg, config_for(cfg.size).n_embd)
    check_config(cfg, env.world)
    pretrain(cfg, env)
    if env.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
