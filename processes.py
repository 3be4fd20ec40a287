"""The diffusion processes, by name: the one place a new process is registered.

A process is a value with the interface of `diffusion.MaskingProcess` (prior, forward_sample,
denoise, posterior, reverse_step, loss, soft_loss, config, ...). Training, distillation and the
samplers only talk to that interface; a checkpoint records `process.config()` so that
`process_from_config` rebuilds the same value when the checkpoint is read.
"""
from diffusion import SCHEDULES, MaskingProcess
from sedd import SeddProcess
from uniform import UniformProcess

PROCESSES = {"absorbing": MaskingProcess, "uniform": UniformProcess, "sedd": SeddProcess}


def process_from_config(config, vocab_size, time_conditioned=False):
    """Rebuild the process a checkpoint recorded (checkpoints from before it was recorded are
    absorbing with the log-linear schedule)."""
    config = config or {"kind": "absorbing", "schedule": "loglinear", "eps": 1e-3}
    if config["kind"] not in PROCESSES:
        raise ValueError(f"unknown diffusion process {config['kind']!r} (known: {', '.join(PROCESSES)})")
    schedule = SCHEDULES[config["schedule"]](config["eps"])
    extra = {k: v for k, v in config.items() if k not in ("kind", "schedule", "eps")}  # e.g. uniform's states
    return PROCESSES[config["kind"]](vocab_size, schedule, time_conditioned, **extra)
