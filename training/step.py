"""One optimizer step, the way every loop takes it, and what a step is made of.

A loop holds its networks as `Trained` (the module, what runs it, its AdamW and warm-up), draws
step i's batch with `step_batch`, splits it into micro-batches, and calls `optimizer_step` with
the loss of one micro-batch. The EMA of the sampled network is `make_ema`'s. Under torchrun every
process runs the same loop on its share of the batch; DDP averages the gradients.
"""
import contextlib
import copy
import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from diffusion import antithetic_times
from plumbing import devices


@dataclass
class Env:
    """Where this process runs: its device, and its rank among `world` processes (torchrun)."""
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self):
        return self.rank == 0

    def autocast(self):
        return devices.autocast(self.device)


def setup(device_name):
    """The Env of this process; under torchrun, joins the process group (NCCL on GPUs, gloo on CPUs)."""
    device = devices.pick(device_name)
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
    sequences fit in 60% of the free memory (devices.training_bytes_per_sequence), with gradient
    accumulation up to the global batch. 0 when the whole batch fits."""
    if cfg.micro_batch_size is not None:
        return cfg
    per_process = cfg.batch_size // env.world
    each = devices.training_bytes_per_sequence(model_cfg.vocab_size + 1, model_cfg.n_embd, model_cfg.n_layer,
                                               cfg.seq_len)
    fits = max(1, int(0.6 * devices.free_memory(env.device) // each))
    micro = max(d for d in range(1, min(fits, per_process) + 1) if per_process % d == 0)
    return dataclasses.replace(cfg, micro_batch_size=0 if micro == per_process else micro)


# ----------------------------------------------------------------------------- networks

@dataclass
class Trained:
    """A network in training. `module` is the network (saved, averaged, clipped); `run` is what a
    loss calls: the same network, DDP-wrapped under torchrun and compiled with --compile."""
    module: torch.nn.Module
    run: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def trained(module, lr, cfg, env):
    """AdamW (betas 0.9, 0.999; --weight-decay) with a linear warm-up over --warmup steps, then a
    constant rate: every paper's optimizer here."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999),
                                  fused=env.device.type == "cuda")  # one kernel for all the parameters
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    run = DistributedDataParallel(module) if env.world > 1 else module
    return Trained(module, torch.compile(run) if cfg.compile else run, optimizer, scheduler)


def make_ema(module, decay):
    """The exponential moving average of `module`'s weights (and buffers), which is sampled and judged."""
    return AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def trainable_copy(model):
    """A copy that trains, from the same weights: a student, or IDLM's fake model."""
    return copy.deepcopy(model).train().requires_grad_(True)


def frozen(model):
    """A copy in eval mode that takes no gradient: a teacher."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- a step

def step_batch(data, cfg, env, step, split="train", stream=0):
    """This process's share of step `step`'s global batch: clean tokens x [B, L], antithetic times
    t [B] and mask uniforms u [B, L]. All are drawn for the whole global batch from (seed, step,
    stream) and then sliced, so one process and N processes see the same numbers, and a resumed run
    continues where the killed one stopped. Stream 0 is the step's batch; stream k > 0 another of
    the same step (IDLM's fake steps with --fake-batch fresh)."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + (10**9 if split == "val" else 0)
                                      + 2 * 10**9 * stream)
    x = data.batch(split, cfg.batch_size, cfg.seq_len, g)
    t = antithetic_times(torch.rand((), generator=g).item(), cfg.batch_size)
    u = torch.rand(x.shape, generator=g)
    share = slice(env.rank * cfg.batch_size // env.world, (env.rank + 1) * cfg.batch_size // env.world)
    return tuple(v[share].to(env.device) for v in (x, t, u))


def seed_step(cfg, env, step):
    """Seed the draws made inside the losses (and dropout) at step `step` on this process: a
    function of (seed, step, rank), so that a resumed run draws what the killed one would have."""
    torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + env.rank)


def micro_batches(batch, size):
    """The batch (x, t, u) in chunks of `size` rows (0: one chunk), for gradient accumulation."""
    n = batch[0].shape[0]
    size = size or n
    return [tuple(v[i:i + size] for v in batch) for i in range(0, n, size)]


def optimizer_step(net, chunks, loss_of, env, grad_clip):
    """One optimizer step of `net` on a batch given as micro-batches: loss_of(x, t, u) is a micro-
    batch's (loss, logs: floats to average). Gradients of the chunks' mean loss accumulate (DDP averages them
    over the processes on the last chunk only), are clipped to --grad-clip (0: off), and AdamW and
    its schedule step. Returns (the batch's mean loss, the mean of each logged value)."""
    net.optimizer.zero_grad(set_to_none=True)
    total, logs = 0.0, {}
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext() if last or env.world == 1 else net.run.no_sync()
        with sync, env.autocast():
            loss, extra = loss_of(*chunk)
            (loss / len(chunks)).backward()
        total += loss.item() / len(chunks)
        for k, v in extra.items():
            logs[k] = logs.get(k, 0.0) + v / len(chunks)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.module.parameters(), grad_clip)
    net.optimizer.step()
    net.scheduler.step()
    return total, logs
