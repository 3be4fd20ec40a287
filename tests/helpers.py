"""Shared by the tests: hypothesis settings, tiny enumerable worlds and their optimal denoiser,
tiny models and checkpoints on disk, and running a script to check its errors."""
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st

from loading import checkpoint
from model import GPT, DiT, ModelConfig, config_for

ROOT = Path(__file__).resolve().parents[1]
V, L = 8, 16
SYNTHETIC = {"kind": "synthetic", "vocab_size": V, "seq_len": L, "branching": 3, "seed": 0}
seeds = st.integers(0, 2**31 - 1)


def examples(n):
    """Few, reproducible hypothesis examples: the suite shares two CPU cores."""
    return settings(max_examples=n, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------- tiny worlds

def all_sequences(V, L):
    """Every sequence of V^L, in lexicographic order, as rows of an int array."""
    return np.array(list(itertools.product(range(V), repeat=L)))


def tiny_world(V, L, seed):
    """Every sequence of V^L and a random distribution p over them (seeded Dirichlet)."""
    xs = all_sequences(V, L)
    return xs, np.random.default_rng(seed).dirichlet(np.ones(len(xs)))


def optimal_denoiser(xs, p, z, V):
    """x*(z)[i] = p(x_i | revealed positions of z), [L, V]; one-hot at revealed positions (MASK = V)."""
    consistent = np.all((z == V) | (xs == z), axis=1)
    weights = p * consistent
    return np.stack([np.bincount(xs[:, i], weights=weights, minlength=V)
                     for i in range(xs.shape[1])]) / weights.sum()


def mask_patterns(L):
    """Every subset of positions with at least one masked, as boolean rows."""
    return [np.array(bits, dtype=bool) for bits in itertools.product([False, True], repeat=L) if any(bits)]


# ----------------------------------------------------------------------------- stand-in networks

class OptimalDenoiserNet(torch.nn.Module):
    """The optimal denoiser of a tiny world as a network: (tokens [N, L], sigma [N]) -> logits
    [N, L, V+1]. Logits are the log of the optimal probabilities; MASK and revealed rows get junk
    that SUBS must override."""

    def __init__(self, xs, p, V):
        super().__init__()
        L = xs.shape[1]
        states = all_sequences(V + 1, L)
        table = np.full((len(states), L, V + 1), 3.0)
        for row, z in zip(table, states):
            masked = z == V
            row[masked, :V] = np.log(optimal_denoiser(xs, p, z, V)[masked])
        self.table = torch.tensor(table, dtype=torch.float32)
        self.powers = (V + 1) ** torch.arange(L - 1, -1, -1)

    def forward(self, tokens, sigma):
        return self.table[(tokens * self.powers).sum(-1)]


class AdversarialDenoiser:
    """A fake network: fresh random logits every call, some huge, possibly favouring MASK.
    Records every z it is called on."""

    def __init__(self, V, seed, scale, mask_logit):
        self.V, self.seed, self.scale, self.mask_logit = V, seed, scale, mask_logit
        self.calls = []

    def __call__(self, z, sigma):
        self.calls.append(z.clone())
        g = torch.Generator().manual_seed(self.seed + len(self.calls))
        logits = self.scale * torch.randn(*z.shape, self.V + 1, generator=g)
        logits[..., self.V] = self.mask_logit
        return logits


# ----------------------------------------------------------------------------- tiny models


def tiny_model(kind="mdlm"):
    """A random 1-layer model; the DiT's zero-initialised output layer is drawn at random too."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, seq_len=L, n_layer=1, n_head=2, n_embd=16, cond_dim=16, dropout=0.0)
    model = GPT(cfg) if kind == "ar" else DiT(cfg)
    if kind != "ar":
        torch.nn.init.normal_(model.output_layer.linear.weight)
    return model.eval()


def random_dit(seed, vocab_size, seq_len):
    """A micro DiT with every weight nudged: its zero-initialised adaLN gates and output layer
    come alive, so its predictions depend on the context and are far from uniform."""
    torch.manual_seed(seed)
    model = DiT(config_for("micro", vocab_size=vocab_size, seq_len=seq_len, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def mdlm_state_dict(cfg, seed, prefix="backbone."):
    """Random tensors under the parameter names and shapes of MDLM's DiT (SPEC.md §8), plus a
    key of the diffusion wrapper around it that the loader must ignore."""
    g = torch.Generator().manual_seed(seed)
    W, C, V1, D = cfg.n_embd, cfg.cond_dim, cfg.vocab_size + 1, cfg.n_embd // cfg.n_head

    def linear(name, fan_out, fan_in, bias=True):
        sd[f"{name}.weight"] = torch.randn(fan_out, fan_in, generator=g) / math.sqrt(fan_in)
        if bias:
            sd[f"{name}.bias"] = 0.3 * torch.randn(fan_out, generator=g)

    def norm(name):
        sd[f"{name}.weight"] = 1 + 0.3 * torch.randn(W, generator=g)

    sd = {"vocab_embed.embedding": torch.randn(V1, W, generator=g)}
    linear("sigma_map.mlp.0", C, 256)
    linear("sigma_map.mlp.2", C, C)
    for i in range(cfg.n_layer):
        norm(f"blocks.{i}.norm1")
        linear(f"blocks.{i}.attn_qkv", 3 * W, W, bias=False)
        linear(f"blocks.{i}.attn_out", W, W, bias=False)
        norm(f"blocks.{i}.norm2")
        linear(f"blocks.{i}.mlp.0", 4 * W, W)
        linear(f"blocks.{i}.mlp.2", W, 4 * W)
        linear(f"blocks.{i}.adaLN_modulation", 6 * W, C)
    norm("output_layer.norm_final")
    linear("output_layer.linear", V1, W)
    linear("output_layer.adaLN_modulation", 2 * W, C)
    sd["rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, D, 2).float() / D)
    sd = {prefix + k: v for k, v in sd.items()}
    sd["noise.sigma_min"] = torch.tensor(1e-4)
    return sd


def write_hub_folder(folder, state_dict, cfg, weights="model.safetensors"):
    """A folder in the layout of MDLM's Hugging Face repository: config.json (the hub's field
    names; its vocab_size counts MASK) and the weights as safetensors or a torch pickle."""
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"model_type": "mdlm", "vocab_size": cfg.vocab_size + 1, "model_length": cfg.seq_len,
              "hidden_dim": cfg.n_embd, "cond_dim": cfg.cond_dim, "n_blocks": cfg.n_layer, "n_heads": cfg.n_head,
              "dropout": cfg.dropout, "time_conditioning": cfg.time_conditioning, "scale_by_sigma": True}
    (folder / "config.json").write_text(json.dumps(fields))
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(tensors, folder / weights)
    else:
        torch.save(tensors, folder / weights)
    return folder


def tiny_gpt2_folder(folder, context=64, seed=0):
    """A randomly initialised 2-layer GPT-2 with GPT-2's own tokenizer (built offline from
    tiktoken's ranks), saved as a local Hugging Face folder: a stand-in for gpt2-large. Built by
    the dress rehearsal's own function, so the tests check the stand-in the script uses."""
    __import__("pytest").importorskip("transformers")
    import importlib.util
    spec = importlib.util.spec_from_file_location("dress_rehearsal", ROOT / "scripts" / "dress_rehearsal.py")
    rehearsal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rehearsal)
    return rehearsal.write_tiny_gpt2(folder, context, seed)


def save_tiny_checkpoint(path, kind="mdlm", data_meta=SYNTHETIC, **fields):
    state = tiny_model(kind).state_dict()
    checkpoint.save({"kind": kind, "model_config": dataclasses.asdict(tiny_model(kind).config), "model": state,
                     "ema": state, "data_meta": data_meta, **fields}, path)
    return path


def run_script(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=timeout)


def assert_one_error_line(result):
    """A user mistake ends with exactly one 'error:' line on stderr, no traceback, exit != 0."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


class RecordingModel(torch.nn.Module):
    """Wraps a model and records the tokens of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.inputs = model, model.config, []

    def forward(self, tokens, sigma=None):
        self.inputs.append(tokens.clone())
        return self.model(tokens, sigma)


SCORE_SAMPLERS = ("analytic", "euler")  # they need a score model: SEDD's process


def process_for(sampler, vocab_size):
    """A process the named sampler applies to: SEDD's for the score samplers, else MDLM's."""
    from diffusion import MaskingProcess
    from processes.sedd import SeddProcess
    return SeddProcess(vocab_size) if sampler in SCORE_SAMPLERS else MaskingProcess(vocab_size)
