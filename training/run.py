"""What a loop does beside its steps: resume, checkpoints, validation, the progress bar and log.jsonl.

A loop makes one `Run`, hands it its networks once (`start`, which resumes a killed run), and
then calls it: `batch(step)` for a step's micro-batches, `after_step` after each step (a log
line every --log-every steps, ckpt.pt every --ckpt-every, validation every --eval-every) and
`end_round` after a round's last step. The checkpoint is always written before validation runs,
so a validation that fails loses no training.
"""
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from loading import checkpoint
from model import next_token_nll
from plumbing import devices
from plumbing.flops import peak_flops, step_flops_per_token
from training.step import Env, micro_batches, seed_step, step_batch

# what a resumed run must share with the run it continues (--iters, --rounds, the schedule of logs and
# checkpoints, the learning rates and the device may change)
SAME_RUN = ("model", "distill", "process", "tau", "teacher", "data", "size", "schedule", "vocab_size", "seq_len",
            "batch_size", "seed", "teacher_steps", "start_steps", "divergence", "recipe", "idlm_gradient", "latent_draws",
            "noise_window", "fake_steps", "fake_batch", "loss_per", "teacher_weights", "mmd_block", "mmd_bandwidth",
            "mmd_candidates", "mmd_draws", "mmd_same_position")


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


def distilled_for(sampling_steps, round, teacher_sampling_steps):
    """What a student checkpoint says of its distillation (`record`'s extra entries): the steps
    it was distilled to sample with, its round (0 for a one-round method), its teacher's steps."""
    return {"sampling_steps": sampling_steps, "round": round, "teacher_sampling_steps": teacher_sampling_steps}


@torch.no_grad()
def validation(model, process, data, cfg, env):
    """Validation NELBO per token, in nats, of a diffusion model (`process.nelbo`: its exp bounds
    the perplexity), or an AR model's next-token NLL (process None), on --eval-batches fixed val
    batches, --micro-batch-size rows at a time, averaged over the batches and the processes."""
    losses = []
    with devices.eval_mode(model), env.autocast():
        for i in range(cfg.eval_batches):
            batch = step_batch(data, cfg, env, i, split="val")
            seed_step(cfg, env, i)
            rows = batch[0].shape[0]
            losses.append(sum((next_token_nll(model, x) if process is None else
                               process.nelbo(model, x, t, u) / x.numel()).item() * x.shape[0] / rows
                              for x, t, u in micro_batches(batch, cfg.micro_batch_size)))
    value = torch.tensor(sum(losses) / len(losses), device=env.device)
    if env.world > 1:
        dist.all_reduce(value)
        value /= env.world
    return value.item()


@dataclass
class Run:
    """One training run: its flags, where it runs, its data and process (None: the AR model), the
    checkpoint kind of its student and the student's model config, and `fields` that every
    checkpoint records (the teacher's path)."""
    cfg: object
    env: Env
    data: object
    process: object
    kind: str
    model_config: dict
    fields: dict = field(default_factory=dict)

    @property
    def out(self):
        return Path(self.cfg.out_dir)

    def start(self, nets, ema, **modules):
        """Hand over the trained networks (`training.step.Trained`, in the order their optimizers are
        saved, the student last), the student's EMA, and the modules every checkpoint records by name
        (model: the student; IDLM's fake). A killed run's checkpoint is loaded into all of them.
        Returns (round, step) to start from: (0, 0) for a new run."""
        self.nets, self.ema, self.modules = nets, ema, modules
        state = existing_run(self.cfg)
        if state is None:
            return 0, 0
        for name, module in modules.items():
            module.load_state_dict(state[name])
        for net, optimizer, scheduler in zip(nets, state["optimizers"], state["schedulers"]):
            net.optimizer.load_state_dict(optimizer)
            net.scheduler.load_state_dict(scheduler)
        ema.load_state_dict(state["ema_state"])
        return state.get("round", 0), state["step"]

    def batch(self, step, stream=0):
        """Step `step`'s batch (`training.step.step_batch`) as micro-batches of --micro-batch-size."""
        return micro_batches(step_batch(self.data, self.cfg, self.env, step, stream=stream), self.cfg.micro_batch_size)

    def read(self, name):
        return checkpoint.read(self.out / name)

    def save(self, name, step, finished=False, **fields):
        """<out-dir>/<name>, written atomically by the main process: `checkpoint.record`'s layout."""
        if not self.env.main:
            return
        modules = {name: module.state_dict() for name, module in self.modules.items()}
        checkpoint.save(checkpoint.record(
            kind=self.kind, model_config=self.model_config, process=self.process, data_meta=self.data.meta(),
            train_config=dataclasses.asdict(self.cfg), ema=self.ema, optimized=self.nets, step=step,
            finished=finished, **modules, **self.fields, **fields), self.out / name)

    # ------------------------------------------------------------------------- one round's steps

    def begin(self, label, first, passes):
        """A round's steps start at `first`. label: what the bar and the log say; passes: (training
        passes, forward passes) of one step, for its FLOPs (plumbing/flops.py)."""
        self.label, self.first, self.t0, self.logs = label, first, time.time(), {}
        self.interval = (first, self.t0)
        self.flops_per_token = step_flops_per_token(self.modules["model"], self.cfg.seq_len, *passes)
        self.bar = tqdm(total=self.cfg.iters, initial=first, desc=label, disable=not self.env.main, dynamic_ncols=True)
        devices.peak_memory(self.env.device, reset=True)

    def log_due(self, done):
        return self.env.main and (done % self.cfg.log_every == 0 or done == self.cfg.iters)

    def after_step(self, done, logs, found=None, **fields):
        """After step `done` of the round: the bar; every --log-every steps (and at the round's end)
        a line of log.jsonl with the losses, what `found` adds and the interval's throughput; before
        the round's end, ckpt.pt every --ckpt-every steps and validation every --eval-every."""
        if not all(math.isfinite(v) for v in logs.values()):
            raise ValueError(f"loss is not finite at step {done - 1} ({logs}); lower --lr")
        tokens_per_step = self.cfg.batch_size * self.cfg.seq_len
        self.bar.update()
        self.bar.set_postfix({**{k: f"{v:.4f}" for k, v in logs.items()},
                              "tok/s": f"{tokens_per_step * (done - self.first) / (time.time() - self.t0):.0f}"})
        if self.log_due(done):
            steps, seconds = done - self.interval[0], time.time() - self.interval[1]
            self.log({"step": done, **logs, **(found or {}), **self.throughput(tokens_per_step * steps / seconds)})
            self.interval = (done, time.time())
        if done < self.cfg.iters and done % self.cfg.ckpt_every == 0:
            self.save("ckpt.pt", done, **fields)
        if done < self.cfg.iters and self.cfg.eval_every and done % self.cfg.eval_every == 0:
            self.validate(done, logs)
        self.logs = logs

    def end_round(self, j, rounds=1, keep=False, **fields):
        """After round j's last step: round{j}.pt when the round's student is kept (`keep`: the next
        round's teacher), then ckpt.pt, which is the start of round j + 1 (where a run killed
        between rounds resumes) or, after the last round, the finished run; then validation.
        Returns the round's tokens/s."""
        iters, last = self.cfg.iters, j == rounds - 1
        if keep:
            self.save(f"round{j}.pt", iters, finished=last, **fields)
        if last:
            self.save("ckpt.pt", iters, finished=True, **fields)
        else:
            self.save("ckpt.pt", 0, **{**fields, "round": j + 1})
        self.validate(iters, self.logs)
        self.bar.close()
        return self.cfg.batch_size * self.cfg.seq_len * (iters - self.first) / (time.time() - self.t0)

    def validate(self, done, logs):
        value = validation(self.ema.module, self.process, self.data, self.cfg, self.env)
        if self.env.main:
            self.bar.write(f"{self.label} step {done}: validation loss {value:.4f} nats per token")
            self.log({"step": done, "val": value, **logs})

    def throughput(self, tokens_per_s):
        """tokens/s of the global batch, the model FLOPs utilisation against each device's peak
        (flops.peak_flops: bf16 on a GPU), and this process's peak memory in GB."""
        peak, _ = peak_flops(self.env.device)
        return {"tokens_per_s": tokens_per_s, "peak_memory_gb": devices.peak_memory(self.env.device) / 1e9,
                "mfu": self.flops_per_token * tokens_per_s / (peak * self.env.world)}

    def log(self, record):
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps({"label": self.label, **record}) + "\n")
