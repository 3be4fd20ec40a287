"""Checkpoints: written atomically, loaded without executing pickled code, self-describing.

A checkpoint holds the kind of model ("mdlm", "ar", "sdtt", "idlm"), its config, the
tokenizer/vocabulary mapping, the raw and EMA weights, and the training state (optimizers,
schedulers, step, round) needed to resume. A plain state dict in MDLM's published layout is
accepted wherever a diffusion checkpoint is.
"""
import os
import pickle
import zipfile
from pathlib import Path

import torch

from cli import UserError
from model import PRESETS, DiT, ModelConfig, build_model, load_mdlm_state_dict

DIFFUSION_KINDS = ("mdlm", "sdtt", "idlm")


def save(obj, path):
    """torch.save to a temporary file, then rename: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read(path):
    """torch.load(weights_only=True), with one clear error for a missing or damaged file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__})") from None


def load_model(path, kinds=None, weights="ema", device="cpu", mdlm_config=None):
    """Rebuild the model of a checkpoint. Returns (model in eval mode, checkpoint dict).

    kinds: the acceptable kinds (a clear error otherwise). weights: "ema" or "raw".
    mdlm_config: the ModelConfig to use when the file is a bare MDLM state dict.
    """
    ckpt = read(path)
    if "kind" not in ckpt:
        ckpt = from_mdlm_state_dict(ckpt, path, mdlm_config)
    if kinds is not None and ckpt["kind"] not in kinds:
        raise UserError(f"{path} holds a {ckpt['kind']} model; expected {' or '.join(kinds)}")
    model = build_model(ckpt["kind"], ModelConfig(**ckpt["model_config"]))
    state = ckpt["ema"] if weights == "ema" and ckpt.get("ema") is not None else ckpt["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), ckpt


def from_mdlm_state_dict(state_dict, path, cfg):
    """Wrap a state dict in MDLM's published layout (e.g. its Hugging Face checkpoint) as ours."""
    state_dict = state_dict.get("state_dict", state_dict)  # Lightning checkpoints nest it
    if not any(k.endswith("vocab_embed.embedding") for k in state_dict):
        raise UserError(f"{path} is neither one of our checkpoints nor an MDLM state dict")
    if cfg is None:  # infer the size: width from the embedding, depth from the block indices
        embed = next(v for k, v in state_dict.items() if k.endswith("vocab_embed.embedding"))
        width = embed.shape[1]
        n_layer = 1 + max(int(k.split("blocks.")[1].split(".")[0]) for k in state_dict if "blocks." in k)
        n_head = next((p["n_head"] for p in PRESETS.values() if p["n_embd"] == width), width // 64)
        cfg = ModelConfig(vocab_size=embed.shape[0] - 1, seq_len=1024, n_layer=n_layer,
                          n_embd=width, n_head=n_head)
    model = DiT(cfg)
    try:
        load_mdlm_state_dict(model, state_dict)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    return {"kind": "mdlm", "model_config": vars(cfg), "model": model.state_dict(), "ema": None,
            "data_meta": {"kind": "gpt2", "gpt2_ids": None}}

