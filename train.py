"""Train a masked-diffusion LM (MDLM), an AR baseline, or distill a teacher with SDTT or IDLM.

    python train.py                         # MDLM teacher on the embedded Shakespeare default
    python train.py --model ar              # the AR model (latency baseline and GenPPL judge)
    python train.py --distill sdtt          # iterated SDTT of a teacher (made first if missing)
    python train.py --distill idlm          # IDLM of a teacher
    torchrun --nproc_per_node=2 train.py    # DDP (gloo on CPU, NCCL on GPU)

This file owns the loop, the optimizers, checkpointing and logging. Every method is a list of
"phases" (an optimizer and a loss); the loop runs each phase once per step: MDLM, AR and SDTT
have one, IDLM two (fake model, then student).
"""
import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

import checkpoint
import idlm
import sdtt
from cli import UserError, parse_config, run
from data import load_data
from diffusion import antithetic_times, nelbo_loss
import evaluate
from evaluate import next_token_nll, validation_loss
from model import build_model, config_for, count_params


def opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    model: str = opt("mdlm", "what to pretrain: a masked diffusion LM or an AR model", choices=["mdlm", "ar"])
    distill: Optional[str] = opt(None, "distill a diffusion teacher instead of pretraining", choices=["sdtt", "idlm"])
    teacher: Optional[str] = opt(None, "teacher checkpoint (ours, or a state dict in MDLM's layout); "
                                       "default: the embedded teacher, trained first if missing")
    data: str = opt("shakespeare", "shakespeare | synthetic | openwebtext | path(s) to text files, comma-separated")
    size: str = opt("tiny", "model size preset: micro, tiny, mini (CPU) or small ... 8B (SDTT Table 2)")
    vocab_size: int = opt(4096, "compacted vocabulary for small corpora (most frequent GPT-2 tokens + <unk>)")
    seq_len: int = opt(128, "sequence length L")
    batch_size: Optional[int] = opt(None, "global batch (all processes, all accumulation steps)")
    micro_batch_size: int = opt(0, "per-process micro-batch; 0 = no gradient accumulation")
    iters: Optional[int] = opt(None, "optimizer steps (per round for SDTT)")
    lr: Optional[float] = opt(None, "peak learning rate (the student's, for IDLM)")
    fake_lr: Optional[float] = opt(None, "IDLM: learning rate of the fake model (default: --lr)")
    warmup: Optional[int] = opt(None, "linear warm-up steps, then constant")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    ema: Optional[float] = opt(None, "EMA decay of the weights used for evaluation and sampling")
    dropout: Optional[float] = opt(None, "dropout (MDLM: 0.1; the CPU presets: 0)")
    eval_every: int = opt(200, "validate every N steps (0 = only at the end)")
    eval_batches: int = opt(4, "validation batches")
    ckpt_every: int = opt(100, "write the checkpoint every N steps")
    out_dir: Optional[str] = opt(None, "output folder (default: out/<mdlm|ar|sdtt|idlm>)")
    resume: bool = opt(False, "continue the run in --out-dir from its checkpoint")
    seed: int = opt(0, "random seed; a step's batch and noise are a function of (seed, step)")
    device: str = opt("auto", "auto | cpu | cuda")
    compile: bool = opt(False, "torch.compile the trained model")
    # SDTT (paper section 3.1 and appendix C)
    rounds: Optional[int] = opt(None, "SDTT rounds (default: down to L/32 steps on CPU presets, 7 for full size)")
    start_steps: Optional[int] = opt(None, "SDTT: sampling steps m of the round-0 teacher (default: L on CPU presets, 1024)")
    teacher_steps: int = opt(2, "SDTT: teacher steps distilled into one student step (2, 4, 8)")
    divergence: Optional[str] = opt(None, "SDTT divergence (default: reverse_kl, the paper's, for full size; "
                                          "mse on the CPU presets, see README)", choices=list(sdtt.DIVERGENCES))
    teacher_sampler: str = opt("ancestral", "SDTT: sampler that makes the targets", choices=list(sdtt.TEACHER_SAMPLERS))
    reset_optimizer: bool = opt(False, "SDTT ablation: a fresh optimizer each round")
    ema_teacher: bool = opt(False, "SDTT ablation: the EMA weights teach the next round (EMA decay 0.999)")
    # the table printed at the end of a distillation
    judge: Optional[str] = opt(None, "GenPPL judge: our AR checkpoint (default out/ar/ckpt.pt, trained if "
                                     "missing), 'exact' for synthetic data, or a Hugging Face model name")
    eval_samples: int = opt(64, "samples per row of the final GenPPL/entropy table")


# Paper settings are the defaults for full-size models; the CPU presets scale them down so the
# embedded default runs in minutes on two cores.
DEFAULTS = {
    ("mdlm", "paper"): dict(batch_size=512, iters=1_000_000, lr=3e-4, warmup=2500, ema=0.9999, dropout=0.1),
    ("ar", "paper"): dict(batch_size=512, iters=1_000_000, lr=3e-4, warmup=2500, ema=0.9999, dropout=0.1),
    ("sdtt", "paper"): dict(batch_size=128, iters=10_000, lr=6e-5, warmup=500, ema=0.9999, rounds=7, start_steps=1024,
                            divergence="reverse_kl"),
    ("idlm", "paper"): dict(batch_size=512, iters=10_000, lr=1e-6, warmup=2500, ema=0.9999),
    ("mdlm", "cpu"): dict(batch_size=32, iters=800, lr=1e-3, warmup=50, ema=0.99, dropout=0.0),
    ("ar", "cpu"): dict(batch_size=32, iters=300, lr=1e-3, warmup=30, ema=0.99, dropout=0.0),
    # SDTT on CPU: the MSE of log-probs (appendix B.3). With the 7-minute teacher the reverse
    # KL's optimum over the 2-step targets is *flatter* than the teacher (README, "Where this
    # differs"), so its students got worse; the MSE sharpens, as in the paper's Figure 6.
    ("sdtt", "cpu"): dict(batch_size=32, iters=80, lr=3e-4, warmup=10, ema=0.9, divergence="mse"),
    ("idlm", "cpu"): dict(batch_size=32, iters=250, lr=1e-4, warmup=20, ema=0.99),
}


def resolve(cfg, width):
    """Fill the flags left at None from DEFAULTS, by method and by scale (full size from 768 wide)."""
    method = cfg.distill or cfg.model
    table = DEFAULTS[(method, "paper" if width >= 768 else "cpu")]
    filled = {k: v for k, v in table.items() if getattr(cfg, k) is None}
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
        cfg = dataclasses.replace(cfg, out_dir=f"out/{method}")
    return cfg


def validate(cfg, world):
    problems = [(cfg.seq_len < 2, "--seq-len must be at least 2"),
                (cfg.batch_size < world or cfg.batch_size % world, f"--batch-size {cfg.batch_size} must be a multiple of the {world} processes"),
                (cfg.micro_batch_size and (cfg.batch_size // world) % cfg.micro_batch_size,
                 f"--micro-batch-size {cfg.micro_batch_size} must divide the per-process batch {cfg.batch_size // world}"),
                (cfg.iters < 1, "--iters must be at least 1"),
                (cfg.lr <= 0, "--lr must be positive"),
                (not 0 <= cfg.ema < 1, "--ema must lie in [0, 1)"),
                (cfg.vocab_size < 3, "--vocab-size must be at least 3"),
                (cfg.teacher_steps < 1, "--teacher-steps must be at least 1")]
    for bad, message in problems:
        if bad:
            raise UserError(message)


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
        """bf16 autocast on CUDA; full float32 on CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def setup(cfg):
    if cfg.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = cfg.device
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA GPU is available")
    if "WORLD_SIZE" not in os.environ:
        return Env(torch.device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return Env(torch.device("cuda", local), rank, world)
    return Env(torch.device("cpu"), rank, world)


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


# ----------------------------------------------------------------------------- losses

def pretrain_loss(kind, model, mask_id, time_conditioned):
    if kind == "ar":
        return lambda x, t, u: (next_token_nll(model, x), {})
    return lambda x, t, u: (nelbo_loss(model, x, t, u, mask_id, time_conditioned), {})


def validate_model(kind, model, data, cfg, env):
    """Validation NELBO per token (diffusion) or NLL per token (AR) on fixed val batches,
    averaged over the processes."""
    batches = (step_batch(data, cfg, env, i, split="val") for i in range(cfg.eval_batches))
    with env.autocast():
        value = torch.tensor(validation_loss(kind, model, batches), device=env.device)
    if env.world > 1:
        dist.all_reduce(value)
        value /= env.world
    return value.item()


# ----------------------------------------------------------------------------- the loop

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
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    wrapped = DistributedDataParallel(model) if env.world > 1 else model
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return Phase(name, model, wrapped, optimizer, scheduler, loss_builder(wrapped))


def make_ema(model, decay):
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_steps(phases, ema, data, cfg, env, start, end, on_checkpoint, label, evaluate=None):
    """Steps start..end-1: for each phase, accumulate gradients over micro-batches, clip, step;
    then update the EMA; log, validate and checkpoint on schedule."""
    bar = tqdm(range(start, end), desc=label, disable=not env.main, dynamic_ncols=True)
    tokens_per_step, t0 = cfg.batch_size * cfg.seq_len, time.time()
    for step in bar:
        batch = step_batch(data, cfg, env, step)
        chunks = micro_batches(batch, cfg.micro_batch_size)
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
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(phase.raw.parameters(), cfg.grad_clip)
            phase.optimizer.step()
            phase.scheduler.step()
            logs[phase.name] = total
        ema.update_parameters(phases[-1].raw)
        if not all(math.isfinite(v) for v in logs.values()):
            raise UserError(f"loss is not finite at step {step} ({logs}); lower --lr")
        done = step + 1
        bar.set_postfix({**{k: f"{v:.4f}" for k, v in logs.items()},
                         "tok/s": f"{tokens_per_step * (done - start) / (time.time() - t0):.0f}"})
        if evaluate is not None and (done == end or (cfg.eval_every and done % cfg.eval_every == 0)):
            value = evaluate()
            if env.main:
                bar.write(f"{label} step {done}: val {value:.4f}")
                log_line(cfg, {"label": label, "step": done, "val": value, **logs})
        if done == end or done % cfg.ckpt_every == 0:
            on_checkpoint(done)
    bar.close()
    return tokens_per_step * (end - start) / (time.time() - t0)


def log_line(cfg, record):
    with open(Path(cfg.out_dir) / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def training_state(phases, ema, step, **extra):
    return {"optimizers": [p.optimizer.state_dict() for p in phases],
            "schedulers": [p.scheduler.state_dict() for p in phases],
            "ema_state": ema.state_dict(), "step": step, **extra}


def restore_training_state(state, phases, ema):
    for phase, o, s in zip(phases, state["optimizers"], state["schedulers"]):
        phase.optimizer.load_state_dict(o)
        phase.scheduler.load_state_dict(s)
    ema.load_state_dict(state["ema_state"])


def existing_run(cfg):
    """The checkpoint to resume from, or None; refuses to overwrite a run without --resume."""
    path = Path(cfg.out_dir) / "ckpt.pt"
    if not path.exists():
        return None
    if not cfg.resume:
        raise UserError(f"{path} already exists: pass --resume to continue that run, or another --out-dir")
    return checkpoint.read(path)


def ckpt_writer(env, path, build):
    """A callback that writes build(step) atomically from the main process."""
    def write(step):
        if env.main:
            checkpoint.save(build(step), path)
    return write


# ----------------------------------------------------------------------------- pretraining

def pretrain(cfg, env):
    """MDLM (SDTT eq. 3) or AR pretraining. Returns the path of the finished checkpoint."""
    data = load_data(cfg.data, cfg.vocab_size, cfg.seq_len)
    model_cfg = config_for(cfg.size, vocab_size=data.vocab_size, seq_len=cfg.seq_len, dropout=cfg.dropout)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, model_cfg).to(env.device)
    mask_id = model_cfg.vocab_size
    phase = make_phase("loss", model, cfg.lr, cfg,
                       lambda m: pretrain_loss(cfg.model, m, mask_id, model_cfg.time_conditioning), env)
    ema = make_ema(model, cfg.ema)
    path, start = Path(cfg.out_dir) / "ckpt.pt", 0
    state = existing_run(cfg)
    if state is not None:
        model.load_state_dict(state["model"])
        restore_training_state(state, [phase], ema)
        start = state["step"]
    if env.main:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        print(f"{cfg.model}: {count_params(model) / 1e6:.2f}M parameters, vocabulary {data.vocab_size}, "
              f"{cfg.iters} steps of {cfg.batch_size}x{cfg.seq_len} tokens on {env.device}")

    def build(step):
        return {"kind": cfg.model, "model_config": dataclasses.asdict(model_cfg), "data_meta": data.meta(),
                "train_config": dataclasses.asdict(cfg), "model": model.state_dict(),
                "ema": ema.module.state_dict(), **training_state([phase], ema, step), "finished": step >= cfg.iters}

    tokens_per_s = train_steps([phase], ema, data, cfg, env, start, cfg.iters, ckpt_writer(env, path, build),
                               cfg.model, lambda: validate_model(cfg.model, ema.module, data, cfg, env))
    if env.main and start < cfg.iters:
        report_throughput(model, cfg, tokens_per_s)
    return path


def report_throughput(model, cfg, tokens_per_s):
    """Training tokens/s and achieved FLOP/s against this machine's measured matmul peak."""
    n = count_params(model, non_embedding=True)
    cfg_m = model.config
    flops_per_token = 6 * n + 12 * cfg_m.n_layer * cfg_m.n_embd * cfg.seq_len  # weights + attention
    achieved = flops_per_token * tokens_per_s
    peak = matmul_peak_flops(next(model.parameters()).device)
    print(f"throughput: {tokens_per_s:.0f} tokens/s, {achieved / 1e9:.1f} GFLOP/s = "
          f"{100 * achieved / peak:.0f}% of the measured fp32 matmul peak ({peak / 1e9:.0f} GFLOP/s)")


def matmul_peak_flops(device, n=2048, repeats=10):
    """Measured float32 matmul FLOP/s of this device (the denominator of the utilisation)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def ensure_default(kind, cfg, env):
    """The embedded teacher (kind "mdlm") or AR judge: reused when finished, else (re)trained."""
    default = TrainConfig(model=kind, data=cfg.data, size=cfg.size, vocab_size=cfg.vocab_size,
                          seq_len=cfg.seq_len, seed=cfg.seed, device=cfg.device, resume=True)
    default = resolve(default, config_for(cfg.size).n_embd)
    path = Path(default.out_dir) / "ckpt.pt"
    if path.exists() and checkpoint.read(path).get("finished"):
        return path
    if env.main:
        print(f"making the default {kind} model in {default.out_dir} first")
    return pretrain(default, env)


# ----------------------------------------------------------------------------- distillation

def load_teacher(cfg, env):
    path = cfg.teacher or ensure_default("mdlm", cfg, env)
    teacher, ckpt = checkpoint.load_model(path, kinds=checkpoint.DIFFUSION_KINDS, device=env.device)
    vocab = ckpt["data_meta"].get("gpt2_ids")
    cfg = dataclasses.replace(cfg, seq_len=teacher.config.seq_len,
                              vocab_size=len(vocab) + 1 if vocab else teacher.config.vocab_size)
    return teacher, ckpt, str(path), cfg


def frozen(model):
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def distill(cfg, env):
    teacher, teacher_ckpt, teacher_path, cfg = load_teacher(cfg, env)
    cfg = resolve(cfg, teacher.config.n_embd)
    validate(cfg, env.world)
    data = load_data(cfg.data, cfg.vocab_size, cfg.seq_len)
    if data.meta() != teacher_ckpt["data_meta"]:
        raise UserError(f"--data {cfg.data} does not use the vocabulary the teacher {teacher_path} was trained with")
    judge = cfg.judge
    if judge is None:  # exact likelihood for synthetic data, else our AR model (made if missing)
        judge = "exact" if teacher_ckpt["data_meta"]["kind"] == "synthetic" else str(ensure_default("ar", cfg, env))
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    run_method = run_sdtt if cfg.distill == "sdtt" else run_idlm
    students = run_method(cfg, env, data, teacher, teacher_ckpt, teacher_path)
    if env.main:
        print_final_table(cfg, env, judge, teacher, teacher_ckpt, students)


def run_sdtt(cfg, env, data, teacher, teacher_ckpt, teacher_path):
    """Iterated SDTT (section 3.1): round j distills the round j-1 student (round 0: the
    pretrained teacher) into a student that samples with 1/n of its teacher's steps."""
    schedule = sdtt.step_schedule(cfg.start_steps, cfg.teacher_steps, cfg.rounds)
    student = copy.deepcopy(teacher).train()                # Algorithm 2, line 4
    for p in student.parameters():
        p.requires_grad_(True)
    mask_id, tc = teacher.mask_id, teacher.config.time_conditioning
    current = {"teacher": frozen(teacher)}

    def loss_builder(model):
        def loss(x, t, u):
            k = schedule[current["round"]]
            return sdtt.distillation_loss(model, current["teacher"], x, t, u, mask_id, cfg.teacher_steps,
                                          (1 - 1e-5) / k, cfg.divergence, cfg.teacher_sampler, tc), {}
        return loss

    phase = make_phase(cfg.divergence, student, cfg.lr, cfg, loss_builder, env)
    ema = make_ema(student, cfg.ema)
    start_round, start_step, state = 0, 0, existing_run(cfg)
    if state is not None:
        student.load_state_dict(state["model"])
        restore_training_state(state, [phase], ema)
        start_round, start_step = state["round"], state["step"]
    for j in range(start_round, cfg.rounds):
        first_step = start_step if j == start_round else 0
        if j > 0:  # the teacher of round j is the student of round j-1
            if j == start_round:
                previous = checkpoint.read(Path(cfg.out_dir) / f"round{j - 1}.pt")
                current["teacher"].load_state_dict(previous["ema" if cfg.ema_teacher else "model"])
            else:
                current["teacher"] = frozen(ema.module if cfg.ema_teacher else student)
        if cfg.reset_optimizer and first_step == 0:
            phase.optimizer.state.clear()
        current["round"] = j

        def build(step, j=j):
            return {"kind": "sdtt", "model_config": teacher_ckpt["model_config"], "data_meta": data.meta(),
                    "train_config": dataclasses.asdict(cfg), "teacher_path": teacher_path,
                    "model": student.state_dict(), "ema": ema.module.state_dict(),
                    "sampling_steps": schedule[j + 1], **training_state([phase], ema, step, round=j),
                    "finished": j == cfg.rounds - 1 and step >= cfg.iters}

        def on_checkpoint(step, j=j, build=build):
            if not env.main:
                return
            if step < cfg.iters:
                checkpoint.save(build(step), Path(cfg.out_dir) / "ckpt.pt")
                return
            # round done: keep its student, then make the start of round j+1 the resume point
            checkpoint.save(build(step), Path(cfg.out_dir) / f"round{j}.pt")
            nxt = build(step) if j == cfg.rounds - 1 else {**build(0), "round": j + 1}
            checkpoint.save(nxt, Path(cfg.out_dir) / "ckpt.pt")

        label = f"sdtt round {j} ({schedule[j]}->{schedule[j + 1]} steps)"
        train_steps([phase], ema, data, cfg, env, first_step, cfg.iters, on_checkpoint, label,
                    lambda: validate_model("mdlm", ema.module, data, cfg, env))
        if env.world > 1:
            dist.barrier()  # round{j}.pt is written before anyone reads it
    return [(f"SDTT round {j}", Path(cfg.out_dir) / f"round{j}.pt", schedule[j + 1]) for j in range(cfg.rounds)]


def run_idlm(cfg, env, data, teacher, teacher_ckpt, teacher_path):
    """IDLM Algorithm 1: alternate a fake-model step (eq. 10) and a student step (eq. 11)."""
    mask_id, tc = teacher.mask_id, teacher.config.time_conditioning
    teacher = frozen(teacher)
    student, fake = (copy.deepcopy(teacher).train().requires_grad_(True) for _ in range(2))
    fake_phase = make_phase("fake", fake, cfg.fake_lr, cfg,
                            lambda m: lambda x, t, u: (idlm.fake_loss(m, student, x, t, u, mask_id, tc), {}), env)
    student_phase = make_phase("student", student, cfg.lr, cfg,
                               lambda m: lambda x, t, u: idlm.student_loss(m, teacher, fake, x, t, u, mask_id, tc), env)
    phases = [fake_phase, student_phase]
    ema = make_ema(student, cfg.ema)
    start, state = 0, existing_run(cfg)
    if state is not None:
        student.load_state_dict(state["model"])
        fake.load_state_dict(state["fake"])
        restore_training_state(state, phases, ema)
        start = state["step"]
    steps = [cfg.seq_len // 16, cfg.seq_len // 32]
    path = Path(cfg.out_dir) / "ckpt.pt"

    def build(step):
        return {"kind": "idlm", "model_config": teacher_ckpt["model_config"], "data_meta": data.meta(),
                "train_config": dataclasses.asdict(cfg), "teacher_path": teacher_path,
                "model": student.state_dict(), "ema": ema.module.state_dict(), "fake": fake.state_dict(),
                "sampling_steps": steps[-1], **training_state(phases, ema, step), "finished": step >= cfg.iters}

    train_steps(phases, ema, data, cfg, env, start, cfg.iters, ckpt_writer(env, path, build), "idlm",
                lambda: validate_model("mdlm", ema.module, data, cfg, env))
    return [("IDLM", path, s) for s in steps]


def print_final_table(cfg, env, judge_spec, teacher, teacher_ckpt, students):
    """GenPPL and entropy of the teacher at L, L/4, L/16, L/32 steps and of each student at
    its steps; printed, and written to <out_dir>/table.md."""
    judge = evaluate.load_judge(judge_spec, teacher_ckpt["data_meta"], env.device)
    L = cfg.seq_len
    entries = [("teacher", teacher, "mdlm", s) for s in (L, L // 4, L // 16, L // 32) if s >= 1]
    for label, path, steps in students:
        model, _ = checkpoint.load_model(path, device=env.device)
        entries.append((label, model, "sdtt", steps))
    rows = evaluate.quality_rows(entries, judge, cfg.eval_samples, min(cfg.eval_samples, 32), L, cfg.seed, env.device)
    table = evaluate.markdown_table(rows, ["label", "steps", "genppl", "entropy", "nfe"])
    print(f"\nGenPPL (judge: {judge_spec}) and entropy, {cfg.eval_samples} samples of {L} tokens:\n{table}")
    (Path(cfg.out_dir) / "table.md").write_text(table + "\n")


def main():
    cfg = parse_config(TrainConfig, __doc__.split("\n\n")[0])
    env = setup(cfg)
    if cfg.distill:
        distill(cfg, env)
    else:
        cfg = resolve(cfg, config_for(cfg.size).n_embd)
        validate(cfg, env.world)
        pretrain(cfg, env)
    if env.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
