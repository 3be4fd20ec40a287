"""Teachers from anywhere: MDLM's and Duo's published weights, in each layout they come in, as one
of our checkpoints (the dict checkpoint.record writes, kind "mdlm"; Duo's record the uniform process).

    a folder in the Hugging Face layout   config.json + model.safetensors (or pytorch_model.bin)
    a hub name                             kuleshov-group/mdlm-owt, s-sahoo/duo, s-sahoo/duo-distilled
    a Lightning checkpoint                 *.ckpt of MDLM's or Duo's training code (EMA weights when present)
    a bare state dict                      MDLM's parameter names, with or without `backbone.`

The architecture comes from config.json, under the hub's field names. A bare state dict has no
config, so it is read off the tensors' shapes; it is never guessed from a preset. Loading is
strict: one error names every unknown and missing key.

The process (absorbing MDLM, or uniform Duo: id 50257 is MASK for one, [PAD] for the other) comes
from config.json or the Lightning checkpoint's Hydra config (lightning.py). A bare state dict, or a
Lightning checkpoint whose config cannot be read, says nothing: it is MDLM's unless the caller
states the process (`--process uniform`); a stated process that contradicts a recorded one is an error.
"""
import dataclasses
import json
import pickle
import re
from pathlib import Path

import torch

from loading import lightning
from model import DiT, ModelConfig, load_mdlm_state_dict
from processes.registry import recorded_family

GPT2_VOCAB = 50257                      # MDLM's OpenWebText models: GPT-2's tokens, then MASK
MDLM_CONTEXT = 1024                     # MDLM's model_length, for a state dict that does not say
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
# config.json field (the hub's MDLMConfig) -> ModelConfig field
HUB_FIELDS = {"vocab_size": "vocab_size", "model_length": "seq_len", "hidden_dim": "n_embd", "cond_dim": "cond_dim",
              "n_blocks": "n_layer", "n_heads": "n_head", "dropout": "dropout",
              "time_conditioning": "time_conditioning"}


# ----------------------------------------------------------------------------- architecture

def config_from_json(fields, source):
    """ModelConfig from a config.json in the hub's layout (its vocab_size counts MASK)."""
    missing = sorted(set(HUB_FIELDS) - set(fields))
    if missing:
        raise ValueError(f"{source}: config.json lacks {', '.join(missing)} (an MDLM config has {', '.join(HUB_FIELDS)})")
    values = {ours: fields[theirs] for theirs, ours in HUB_FIELDS.items()}
    return ModelConfig(**{**values, "vocab_size": values["vocab_size"] - 1})


def config_from_shapes(state_dict, source):
    """ModelConfig read off a state dict: width and vocabulary from the embedding, cond_dim from
    sigma_map, head size from the rotary frequencies, depth from the block indices."""
    try:
        rows, width = state_dict["vocab_embed.embedding"].shape
        cond_dim = state_dict["sigma_map.mlp.0.weight"].shape[0]
        head_dim = 2 * state_dict["rotary_emb.inv_freq"].numel()
    except KeyError as e:
        raise ValueError(f"{source}: cannot read the architecture off the state dict: it has no {e.args[0]}") from None
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if width % head_dim or not blocks:
        raise ValueError(f"{source}: width {width}, head size {head_dim} and {len(blocks)} blocks are not a DiT")
    return ModelConfig(vocab_size=rows - 1, seq_len=MDLM_CONTEXT, n_layer=max(blocks) + 1, n_head=width // head_dim,
                       n_embd=width, cond_dim=cond_dim, dropout=0.1, time_conditioning=False)


def config_from_sedd_json(fields, source):
    """ModelConfig from the Hydra config that SEDD's PyTorchModelHubMixin saves as config.json
    (louaaron/sedd-small: tokens, graph, noise, model; its exact contents are UNCONFIRMED offline,
    SPEC.md §9). Only the absorbing graph is a SEDD process here."""
    try:
        graph, model, tokens = fields["graph"]["type"], fields["model"], fields["tokens"]
        values = dict(vocab_size=tokens, seq_len=model["length"], n_embd=model["hidden_size"],
                      cond_dim=model["cond_dim"], n_layer=model["n_blocks"], n_head=model["n_heads"],
                      dropout=model.get("dropout", 0.1), time_conditioning=True)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{source}: a SEDD config.json lacks {e}") from None
    if graph not in ("absorb", "absorbing"):
        raise ValueError(f"{source}: SEDD graph {graph!r} is not supported (only the absorbing graph)")
    return ModelConfig(**values)


SEDD_PROCESS = {"kind": "sedd", "schedule": "loglinear", "eps": 1e-3}  # SEDD's LogLinearNoise


def without_prefix(state_dict):
    """MDLM's names without the `backbone.` of its wrappers (Lightning module, Hugging Face model)."""
    return {k.removeprefix("backbone."): v for k, v in state_dict.items()}


def as_checkpoint(state_dict, cfg, source, ema_params=None, kind="mdlm", process=None):
    """Our checkpoint of MDLM's weights (strictly loaded). ema_params: EMA values of the
    parameters in the state dict's order (a Lightning checkpoint's shadow_params). process: the
    process config to record (None: MDLM's absorbing process)."""
    model = DiT(cfg)
    try:
        load_mdlm_state_dict(model, state_dict)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    raw, ema = model.state_dict(), None
    if ema_params is not None:
        names = [k for k in without_prefix(state_dict) if k in dict(model.named_parameters())]
        if len(ema_params) < len(names) or any(p.shape != raw[k].shape for k, p in zip(names, ema_params)):
            raise ValueError(f"{source}: its EMA weights do not match its parameters")
        ema = {**raw, **dict(zip(names, ema_params))}
    vocab = cfg.vocab_size
    meta = {"kind": "gpt2", "gpt2_ids": None} if vocab == GPT2_VOCAB else {"kind": "foreign", "vocab_size": vocab}
    return {"kind": kind, "model_config": vars(cfg), "process": process, "model": raw, "ema": ema, "data_meta": meta,
            "source": source}


# ----------------------------------------------------------------------------- files

def read_weights(path):
    """A weights file: safetensors (no code at all) or a torch pickle of tensors only."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ValueError(f"{path} is a safetensors file: pip install -r requirements-gpu.txt") from None
    except Exception as e:  # safetensors and torch raise several kinds for a damaged file
        raise ValueError(f"{path} is truncated or corrupt ({type(e).__name__})") from None


class Inert:
    """Stands in for every object of a Lightning checkpoint that is not a tensor or a container
    (its Hydra config, tokenizer, loops): built from nothing, so no pickled code ever runs."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return Inert()

    def __setstate__(self, state):
        self.pickled_state = state  # plain data only (what lightning.plain reads); nothing runs

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


class InertUnpickler(pickle.Unpickler):
    """Resolves only what tensors and containers are made of; anything else becomes Inert."""
    ALLOWED = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
               ("torch._utils", "_rebuild_parameter_with_state"), ("torch._tensor", "_rebuild_from_type_v2"),
               ("torch", "Size"), ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"),
               ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        return Inert


class InertPickle:
    """The pickle module torch.load is given for a Lightning checkpoint."""
    Unpickler = InertUnpickler
    __name__ = "InertPickle"

    @staticmethod
    def load(file, **kwargs):
        return InertUnpickler(file, **kwargs).load()


def read_lightning(path):
    """(state dict of the backbone, EMA shadow parameters or None, its training config as a plain
    dict or None) of a Lightning checkpoint. A backbone that is itself a wrapper with a `backbone`
    (Duo's code with algo.backbone=hf_dit: UNCONFIRMED layout) loses the inner prefix too."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=InertPickle)
    except Exception as e:
        raise ValueError(f"{path} is truncated or corrupt ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict)")
    backbone = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    if backbone and all(k.startswith("backbone.backbone.") for k in backbone):
        backbone = {k.removeprefix("backbone."): v for k, v in backbone.items()}
    ema = ckpt.get("ema")
    return backbone, ema.get("shadow_params") if isinstance(ema, dict) else None, lightning.hydra_config(ckpt)


def download(name):
    """A hub repository's config and weights, through huggingface_hub's cache."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{name} is not a local file or folder; a hub name needs "
                         "`pip install -r requirements-gpu.txt`") from None
    try:
        return Path(snapshot_download(name, allow_patterns=["config.json", *WEIGHT_FILES]))
    except Exception as e:  # no network, unknown repository, gated: all mean "not available"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"could not download {name} from the Hugging Face hub ({type(e).__name__}: "
                         f"{reason[:160]})") from None


def save_folder(model, folder):
    """Our DiT in the hub's layout: config.json (the hub's field names) and model.safetensors
    (MDLM's names under `backbone.`), what `load` reads back. Returns the folder."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = vars(model.config)
    fields = {"model_type": "mdlm", **{theirs: cfg[ours] for theirs, ours in HUB_FIELDS.items()}}
    fields["vocab_size"] += 1  # the hub counts MASK
    (folder / "config.json").write_text(json.dumps(fields, indent=2) + "\n")
    save_file({"backbone." + k: v.detach().contiguous() for k, v in model.state_dict().items()},
              folder / "model.safetensors")
    return folder


# ----------------------------------------------------------------------------- the routes

def from_state_dict(state_dict, source, process=None):
    """A bare state dict in MDLM's layout: the architecture read off its shapes; MDLM's unless
    process (the caller's word: it records none) is "uniform", then Duo's."""
    stripped = without_prefix(state_dict)
    if "vocab_embed.embedding" not in stripped:
        raise ValueError(f"{source} is neither one of our checkpoints nor an MDLM state dict")
    cfg = config_from_shapes(stripped, source)
    return as_duo(state_dict, cfg, source) if process == "uniform" else as_checkpoint(state_dict, cfg, source)


def from_lightning(path, source, process=None):
    """A Lightning .ckpt of MDLM's or Duo's code: the process its config records (else the one
    stated, else MDLM's), the architecture off the shapes, L, dropout, time conditioning and the
    schedule from its config (lightning.mdlm_settings, duo_settings), the EMA weights when present."""
    state_dict, ema_params, config = read_lightning(path)
    stripped = without_prefix(state_dict)
    if "vocab_embed.embedding" not in stripped:
        raise ValueError(f"{source}: its state_dict holds no MDLM backbone")
    cfg = config_from_shapes(stripped, source)
    recorded = lightning.recorded_process(config, source)
    if (recorded or process) == "uniform":
        return as_duo(state_dict, cfg, source, ema_params, lightning.duo_settings(config, source))
    settings = lightning.mdlm_settings(config, source)
    cfg = dataclasses.replace(cfg, seq_len=settings["seq_len"], dropout=settings["dropout"],
                              time_conditioning=settings["time_conditioning"])
    process = {"kind": "absorbing", "schedule": settings["schedule"], "eps": settings["eps"]}
    return as_checkpoint(state_dict, cfg, source, ema_params, process=process)


def duo_fields(fields):
    """(config fields, process config) of a Duo checkpoint (s-sahoo/duo, s-sahoo/duo-distilled:
    `architectures: [DUO]`), else (fields, None). Duo's DiT has MDLM's keys (UNCONFIRMED: read in a
    third-party port, SPEC.md §9) but is time-conditioned, and its vocab_size 50258 counts GPT-2's
    tokens and [PAD], a state of the uniform noise: id 50257 is not MASK, so the process is recorded."""
    if "DUO" not in fields.get("architectures", ()):
        return fields, None
    return {**fields, "time_conditioning": True}, uniform_process(fields.get("vocab_size"))


def uniform_process(states, schedule="loglinear", eps=1e-3):
    """The process config of a Duo checkpoint: uniform noise over all `states` rows of its
    embedding (GPT-2's tokens and [PAD]), Duo's log-linear schedule by default."""
    return {"kind": "uniform", "schedule": schedule, "eps": eps, "states": states}


def as_duo(state_dict, cfg, source, ema_params=None, settings=None):
    """Our checkpoint of Duo's weights: time-conditioned, recording the uniform process; settings:
    what its training config said (lightning.duo_settings), kept under `duo` (its gamma window is
    a training setting: our losses and samplers do not read it)."""
    settings = settings or lightning.duo_settings(None, source)
    cfg = dataclasses.replace(cfg, time_conditioning=True, seq_len=settings["seq_len"], dropout=settings["dropout"])
    process = uniform_process(cfg.vocab_size + 1, settings["schedule"], settings["eps"])
    return {**as_checkpoint(state_dict, cfg, source, ema_params, process=process), "duo": settings}


def check_process(ckpt, stated, source):
    """One clear line where the process the caller stated contradicts the recorded one."""
    if stated is not None and ckpt.get("kind") != "ar" and recorded_family(ckpt) != stated:
        raise ValueError(f"{source} records the {recorded_family(ckpt)} process, not {stated}: "
                         f"drop --process {stated} or give a {stated} teacher")


def from_folder(folder, source):
    """A folder in the Hugging Face layout: config.json and one weights file (MDLM's or Duo's)."""
    config_file = folder / "config.json"
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if not config_file.is_file() or weights is None:
        raise ValueError(f"{source}: a model folder needs config.json and {' or '.join(WEIGHT_FILES)}")
    try:
        fields = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON ({e.msg})") from None
    if "graph" in fields:  # SEDD's layout: unprefixed keys, pytorch_model.bin, its Hydra config
        return as_checkpoint(read_weights(weights), config_from_sedd_json(fields, source), source,
                             kind="sedd", process=SEDD_PROCESS)
    fields, process = duo_fields(fields)
    return as_checkpoint(read_weights(weights), config_from_json(fields, source), source, process=process)


def load(spec, process=None):
    """Our checkpoint of MDLM's or Duo's weights from a folder, a hub name, a .ckpt, a
    .safetensors file or a bare state dict (see the module docstring). process: "absorbing" or
    "uniform" as the caller states it (None: as recorded, else MDLM's)."""
    path = Path(spec)
    if path.is_dir():
        return from_folder(path, spec)
    if path.is_file() and path.suffix == ".ckpt":
        return from_lightning(path, spec, process)
    if path.is_file():
        return from_state_dict(read_weights(path), spec, process)
    if path.suffix in FILE_SUFFIXES or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(spec)):
        raise ValueError(f"checkpoint {spec} does not exist")
    return from_folder(download(spec), spec)
