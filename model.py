"""The networks: MDLM's diffusion transformer (DiT) and an autoregressive GPT with a KV cache.

The DiT follows MDLM's published layout fact for fact (SPEC.md §8), and its modules carry
MDLM's parameter names, so MDLM's checkpoints load by stripping the `backbone.` prefix.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffusion import sample_categorical, shaped_probs

try:  # optional accelerator: never required, used only on CUDA in half precision
    from flash_attn import flash_attn_func
except ImportError:
    flash_attn_func = None


@dataclass
class ModelConfig:
    vocab_size: int = 4096     # real tokens; the DiT adds one row for MASK
    seq_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    cond_dim: int = 128        # width of the time embedding that drives adaLN
    dropout: float = 0.1
    time_conditioning: bool = False  # MDLM's released models are not (they get sigma=0)


# SDTT Table 2 sizes, plus tiny presets that train on a laptop CPU.
PRESETS = {
    "micro": dict(n_layer=2, n_embd=32, n_head=2, cond_dim=32),
    "tiny": dict(n_layer=4, n_embd=128, n_head=4),
    "mini": dict(n_layer=6, n_embd=384, n_head=6),
    "small": dict(n_layer=12, n_embd=768, n_head=12),
    "medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "large": dict(n_layer=24, n_embd=1536, n_head=16),
    "1.3B": dict(n_layer=24, n_embd=2048, n_head=32),
    "3B": dict(n_layer=26, n_embd=3072, n_head=32),
    "8B": dict(n_layer=40, n_embd=4096, n_head=32),
}


CPU_SIZES = ("micro", "tiny", "mini")  # the sizes the CPU presets of config.py are for


def size_of(config):
    """The preset a model config is, or else the widest preset narrower than it (micro if none is)."""
    for name, preset in PRESETS.items():
        if (preset["n_layer"], preset["n_embd"]) == (config.n_layer, config.n_embd):
            return name
    narrower = [name for name, preset in PRESETS.items() if preset["n_embd"] <= config.n_embd]
    return narrower[-1] if narrower else "micro"


def config_for(preset, **overrides):
    if preset not in PRESETS:
        raise ValueError(f"unknown model size {preset!r}; choose from {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[preset], **overrides})


# ----------------------------------------------------------------------------- shared parts

class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias, computed in float32 (as MDLM's)."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.float(), [x.shape[-1]], eps=1e-5) * self.weight.float()


class Rotary(nn.Module):
    """Rotary position embedding, rotate-half convention over the full head dimension."""

    def __init__(self, head_dim, base=10000):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim))

    def forward(self, positions):
        """cos and sin of shape [len, head_dim] for integer positions [len]."""
        freqs = torch.outer(positions.float(), self.inv_freq)
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """x: [B, H, len, D]; rotates pairs (i, i + D/2)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def attention(q, k, v, causal):
    """Softmax attention on [B, H, len, D]. flash-attn when installed on CUDA, else SDPA
    (which itself dispatches to FlashAttention kernels on a GPU)."""
    if flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def split_heads(qkv, n_head):
    """[B, len, 3*width] -> q, k, v of [B, H, len, D] (MDLM's `(three h d)` order)."""
    B, T, _ = qkv.shape
    return qkv.view(B, T, 3, n_head, -1).permute(2, 0, 3, 1, 4).unbind(0)


def mlp(width):
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------- DiT

class TimestepEmbedder(nn.Module):
    """sigma -> sinusoidal features (256, [cos, sin]) -> Linear -> SiLU -> Linear."""

    def __init__(self, cond_dim, frequency_dim=256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma):
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=sigma.device).float() / half)
        args = sigma.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([args.cos(), args.sin()], dim=-1))


class EmbeddingLayer(nn.Module):
    def __init__(self, rows, width):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(rows, width))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, tokens):
        """Token ids [N, L] -> rows of E; or float logits [N, L, K] (Duo's soft input w / tau) ->
        softmax(logits) @ E[:K], the embedding of a point of the simplex (pass logits, not
        probabilities: the softmax is applied here)."""
        if tokens.is_floating_point():
            return tokens.float().softmax(-1).to(self.embedding.dtype) @ self.embedding[:tokens.shape[-1]]
        return self.embedding[tokens]


class DiTBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        width = cfg.n_embd
        self.n_head = cfg.n_head
        self.norm1 = LayerNorm(width)
        self.attn_qkv = nn.Linear(width, 3 * width, bias=False)
        self.attn_out = nn.Linear(width, width, bias=False)
        self.norm2 = LayerNorm(width)
        self.mlp = mlp(width)
        self.dropout = nn.Dropout(cfg.dropout)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * width)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x, c, cos, sin):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        q, k, v = split_heads(self.attn_qkv(modulate(self.norm1(x), shift_msa, scale_msa)), self.n_head)
        attn = attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v, causal=False)
        attn = attn.transpose(1, 2).reshape(x.shape)
        x = x + gate_msa * self.dropout(self.attn_out(attn))
        return x + gate_mlp * self.dropout(self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    def __init__(self, cfg, out_dim):
        super().__init__()
        self.norm_final = LayerNorm(cfg.n_embd)
        self.linear = nn.Linear(cfg.n_embd, out_dim)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 2 * cfg.n_embd)
        for layer in (self.linear, self.adaLN_modulation):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, c):
        """x: hidden states [N, L, width] with c [N, cond_dim], or rows [M, width] with their own c [M, cond_dim]."""
        modulation = self.adaLN_modulation(c)
        shift, scale = (modulation[:, None] if x.dim() == 3 else modulation).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """MDLM's diffusion transformer: (tokens [N, L] with MASK = V, sigma [N]) -> logits [N, L, V+1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.vocab_embed = EmbeddingLayer(cfg.vocab_size + 1, cfg.n_embd)
        self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.rotary_emb = Rotary(cfg.n_embd // cfg.n_head)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_layer))
        self.output_layer = FinalLayer(cfg, cfg.vocab_size + 1)

    def trunk(self, tokens, sigma, blocks=None):
        """Everything but the output layer: final hidden states [N, L, width] and the time
        conditioning c [N, cond_dim]. With `head`, a caller can apply the output layer (V+1 wide,
        often the largest matmul) only at the rows it needs. blocks: run only the first ones."""
        x = self.vocab_embed(tokens)
        c = F.silu(self.sigma_map(sigma))
        cos, sin = self.rotary_emb(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks[:blocks]:
            x = block(x, c, cos, sin)
        return x, c

    def features(self, tokens, block):
        """The hidden states [N, L, width] after block `block` (zero-based) of clean tokens [N, L] at
        sigma = 0: the representation MDLM-MMD compares (mmd.py); later blocks are not run."""
        if not 0 <= block < len(self.blocks):
            raise ValueError(f"block {block}: this model's blocks are 0 to {len(self.blocks) - 1} (--mmd-block)")
        return self.trunk(tokens, torch.zeros(tokens.shape[0], device=tokens.device), blocks=block + 1)[0]

    def head(self, hidden, c):
        """The output layer: logits of hidden states [N, L, width] (c [N, cond_dim]) or of selected
        rows [M, width] (c [M, cond_dim], each row's own sequence's conditioning)."""
        return self.output_layer(hidden, c)

    def forward(self, tokens, sigma):
        return self.head(*self.trunk(tokens, sigma))


def load_mdlm_state_dict(model: DiT, state_dict):
    """Load a state dict in MDLM's published layout, strictly. Our DiT uses MDLM's names, so only
    the `backbone.` prefix of its wrappers goes, and the wrapper's noise schedule (`noise.`) is
    not the network's. The rotary frequencies are a function of the head size: when present,
    they must be ours. One error names every unknown, missing or misshapen key."""
    stripped = {k.removeprefix("backbone."): v for k, v in state_dict.items() if not k.startswith("noise.")}
    expected = model.state_dict()
    problems = [f"unknown {k}" for k in sorted(set(stripped) - set(expected))]
    problems += [f"missing {k}" for k in sorted(set(expected) - set(stripped) - {"rotary_emb.inv_freq"})]
    problems += [f"{k} is {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                 for k, v in sorted(stripped.items()) if k in expected and v.shape != expected[k].shape]
    if problems:
        shown = "; ".join(problems[:12]) + (f"; and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ValueError(f"not the state dict of this MDLM DiT: {shown}")
    inv_freq = stripped.pop("rotary_emb.inv_freq", expected["rotary_emb.inv_freq"])
    if not torch.allclose(inv_freq.float(), expected["rotary_emb.inv_freq"]):
        raise ValueError("its rotary frequencies are not those of base 10000 at this head size")
    model.load_state_dict({**stripped, "rotary_emb.inv_freq": expected["rotary_emb.inv_freq"]})
    return model


# ----------------------------------------------------------------------------- AR baseline

class GPTBlock(nn.Module):
    """Pre-norm causal block with RoPE; the DiT trunk without the adaLN modulation."""

    def __init__(self, cfg):
        super().__init__()
        width = cfg.n_embd
        self.n_head = cfg.n_head
        self.norm1 = LayerNorm(width)
        self.attn_qkv = nn.Linear(width, 3 * width, bias=False)
        self.attn_out = nn.Linear(width, width, bias=False)
        self.norm2 = LayerNorm(width)
        self.mlp = mlp(width)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, cache=None, layer=0, start=0):
        """cache: None, or the KVCache that this block's keys and values at positions
        start.. are written into (layer: this block's index)."""
        q, k, v = split_heads(self.attn_qkv(self.norm1(x)), self.n_head)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, k, v, start)
        # with a cache, new queries see every cached key: causal only within the new chunk
        causal = q.shape[2] == k.shape[2]
        if not causal and q.shape[2] > 1:
            raise ValueError("a cached forward pass takes the prompt once, then one token at a time")
        attn = attention(q, k, v, causal=causal).transpose(1, 2).reshape(x.shape)
        x = x + self.dropout(self.attn_out(attn))
        return x + self.dropout(self.mlp(self.norm2(x)))


class KVCache:
    """The keys and values of every block, preallocated to the full length on the first write
    and written in place: no tensor grows or is copied as tokens are added."""

    def __init__(self, length):
        self.length, self.k, self.v = length, {}, {}

    def write(self, layer, k, v, start):
        """Store k, v [B, H, T, D] at positions start..start+T; return the keys and values of
        positions 0..start+T (views of the cache)."""
        end = start + k.shape[2]
        if end > self.length:
            raise ValueError(f"the KV cache holds {self.length} positions, not {end}")
        if layer not in self.k:
            shape = (*k.shape[:2], self.length, k.shape[3])
            self.k[layer], self.v[layer] = k.new_empty(shape), v.new_empty(shape)
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class GPT(nn.Module):
    """Autoregressive baseline: tokens [N, T] -> next-token logits [N, T, V]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.vocab_embed = EmbeddingLayer(cfg.vocab_size, cfg.n_embd)
        self.rotary_emb = Rotary(cfg.n_embd // cfg.n_head)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layer))
        self.norm_final = LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def hidden_states(self, tokens, cache=None, start=0):
        """The final normalised hidden states [N, T, width]. cache: None or a KVCache; start:
        the position of tokens[:, 0]."""
        x = self.vocab_embed(tokens)
        cos, sin = self.rotary_emb(torch.arange(start, start + tokens.shape[1], device=tokens.device))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, start)
        return self.norm_final(x)

    def forward(self, tokens, cache=None, start=0):
        return self.lm_head(self.hidden_states(tokens, cache, start))

    @torch.no_grad()
    def generate(self, prompt, new_tokens, *, use_cache=True, temperature=1.0, top_p=1.0,
                 generator=None, return_logits=False):
        """Sample new_tokens after prompt [N, P]. With the KV cache (preallocated, written in
        place), each new token costs one single-position forward pass; without it, the whole
        prefix is recomputed every time."""
        length = prompt.shape[1] + new_tokens
        if length - 1 > self.config.seq_len:  # the last token is never fed back
            raise ValueError(f"prompt of {prompt.shape[1]} plus {new_tokens} new tokens exceeds "
                             f"the context of {self.config.seq_len}")
        cache = KVCache(length - 1) if use_cache else None
        tokens = torch.empty(prompt.shape[0], length, dtype=prompt.dtype, device=prompt.device)
        tokens[:, :prompt.shape[1]] = prompt
        all_logits = []
        logits = self(prompt, cache)[:, -1]
        for i in range(prompt.shape[1], length):
            all_logits.append(logits)
            tokens[:, i] = sample_categorical(shaped_probs(logits, temperature, top_p), generator)
            if i + 1 < length:
                logits = (self(tokens[:, i:i + 1], cache, start=i) if use_cache else self(tokens[:, :i + 1]))[:, -1]
        return (tokens, torch.stack(all_logits, 1)) if return_logits else tokens


def next_token_nll(model, x):
    """Next-token cross-entropy of an AR model within each window x [N, L], nats per token: its
    training loss and validation figure."""
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def build_model(kind, cfg: ModelConfig):
    return GPT(cfg) if kind == "ar" else DiT(cfg)
