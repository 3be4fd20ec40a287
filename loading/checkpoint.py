"""Checkpoints: written atomically, loaded without executing pickled code, self-describing.

A checkpoint holds the kind of its model (KINDS: "mdlm", "sedd" and "ar" from pretraining,
"sdtt", "idlm" and "dcd" from a distillation), its config, the diffusion process it was trained
under, the tokenizer/vocabulary mapping, the raw and EMA weights, and the training state
(optimizers, schedulers, step, round) needed to resume. `record` builds it, the same way for
every method. `load_model` is the one loader of every entry point: it takes our checkpoints and,
through hub.py, MDLM's, Duo's and SEDD's published weights in any of their layouts (a Hugging
Face folder or hub name, a Lightning .ckpt, a bare state dict).
"""
import os
from pathlib import Path

import torch

from loading import hub
from model import ModelConfig, build_model
from processes.registry import process_from_config

DIFFUSION_KINDS = ("mdlm", "sedd", "sdtt", "idlm", "dcd", "mmd")
KINDS = DIFFUSION_KINDS + ("ar",)


def save(obj, path):
    """torch.save to a temporary file, then rename: a killed run never leaves half a checkpoint, and a
    failed write (a full disk, a folder that cannot be written) removes its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read(path):
    """torch.load(weights_only=True), with one clear error for a missing or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file: torch's unpickler raises many kinds (IndexError, ...)
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__})") from None


def record(*, kind, model_config, process, data_meta, train_config, model, ema, optimized, step, finished, **extra):
    """The one checkpoint layout: what rebuilds the model (kind, configs, process, vocabulary),
    its raw weights (`model`, a state dict) and EMA weights, and what resumes training (the
    optimizer and schedule of each network in `optimized`, `training.step.Trained`s; the EMA's
    state; the step). extra: method-specific entries (round, fake, sampling_steps...)."""
    return {"kind": kind, "model_config": model_config, "process": None if process is None else process.config(),
            "data_meta": data_meta, "train_config": train_config,
            "model": model, "ema": ema.module.state_dict(),
            "optimizers": [net.optimizer.state_dict() for net in optimized],
            "schedulers": [net.scheduler.state_dict() for net in optimized],
            "ema_state": ema.state_dict(), "step": step, "finished": finished, **extra}


def default_steps(ckpt):
    """(the steps a student was distilled for, a sentence saying so), or None for a checkpoint
    that does not record them (a teacher). training.run.distilled_for writes them."""
    steps = ckpt.get("sampling_steps")
    if steps is None:
        return None
    teacher = ckpt.get("teacher_sampling_steps")
    history = f"{ckpt['kind']} round {ckpt.get('round', 0)}" + (f", its teacher sampled with {teacher}" if teacher else "")
    return steps, f"{steps} steps, as it was distilled for ({history})"


def load(spec, process=None):
    """The checkpoint dict of one of our files, or of MDLM's, Duo's or SEDD's weights in any layout
    (hub.load). process: the family ("absorbing" or "uniform") as the caller states it (`--process`):
    what a bare state dict is, and an error where the checkpoint records the other one."""
    path = Path(spec)
    if path.is_file() and path.suffix not in (".ckpt", ".safetensors"):
        ckpt = read(path)
        ckpt = ckpt if "kind" in ckpt else hub.from_state_dict(ckpt, str(spec), process)
    else:
        ckpt = hub.load(str(spec), process)
    hub.check_process(ckpt, process, spec)
    return ckpt


def load_model(spec, kinds=None, weights="ema", device="cpu", process=None):
    """Rebuild the model of a checkpoint (see `load`). Returns (model in eval mode, checkpoint dict).

    kinds: the acceptable kinds (a clear error otherwise). weights: "ema" or "raw". process: as in `load`.
    """
    ckpt = load(spec, process)
    if kinds is not None and ckpt["kind"] not in kinds:
        raise ValueError(f"{spec} holds a {ckpt['kind']} model; expected {' or '.join(kinds)}")
    model = build_model(ckpt["kind"], ModelConfig(**ckpt["model_config"]))
    state = ckpt["ema"] if weights == "ema" and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), ckpt


def process_of(ckpt):
    """The diffusion process a diffusion checkpoint was trained under (None for an AR model)."""
    if ckpt["kind"] == "ar":
        return None
    cfg = ckpt["model_config"]
    return process_from_config(ckpt.get("process"), cfg["vocab_size"], cfg.get("time_conditioning", False))
