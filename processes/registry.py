"""The diffusion processes, by name: the one place a new process is registered.

A process is a value with the interface of `diffusion.Process` (SPEC.md §1.6). Training,
distillation and the samplers only talk to that interface; a checkpoint records
`process.config()` so that `process_from_config` rebuilds the same value when it is read.
"""
from diffusion import SCHEDULES, MaskingProcess
from processes.sedd import SeddProcess
from processes.uniform import UniformProcess

PROCESSES = {"absorbing": MaskingProcess, "uniform": UniformProcess, "sedd": SeddProcess}
FAMILIES = ("absorbing", "uniform")  # what --process names: a process with a MASK state, or uniform noise


def process_from_config(config, vocab_size, time_conditioned=None):
    """Rebuild the process a checkpoint recorded (checkpoints from before it was recorded are
    absorbing with the log-linear schedule). time_conditioned: the network's, as its config says
    (None: the process's own default; SEDD and the uniform process refuse a network without it)."""
    config = config or {"kind": "absorbing", "schedule": "loglinear", "eps": 1e-3}
    if config["kind"] not in PROCESSES:
        raise ValueError(f"unknown diffusion process {config['kind']!r} (known: {', '.join(PROCESSES)})")
    schedule = SCHEDULES[config["schedule"]](config["eps"])
    extra = {k: v for k, v in config.items() if k not in ("kind", "schedule", "eps")}  # e.g. uniform's states
    if time_conditioned is not None:
        extra["time_conditioned"] = time_conditioned
    return PROCESSES[config["kind"]](vocab_size, schedule, **extra)


def recorded_family(ckpt):
    """"absorbing" or "uniform": the family of the process a checkpoint records (SEDD's is absorbing,
    and so is that of a checkpoint from before the process was recorded)."""
    kind = (ckpt.get("process") or {}).get("kind", "absorbing")
    return PROCESSES[kind].family if kind in PROCESSES else "absorbing"
