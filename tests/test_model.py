"""The networks (SPEC.md §8): attention, RoPE, the DiT against a reference forward written
from the text of SPEC.md §8 on an MDLM-layout state dict, and the GPT's KV cache."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import model
from helpers import mdlm_state_dict


def examples(n):
    """Few, reproducible hypothesis examples: the suite shares two CPU cores."""
    return settings(max_examples=n, deadline=None, derandomize=True)


seeds = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------- attention

def reference_attention(q, k, v, causal):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        T = q.shape[-2]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    return scores.softmax(-1) @ v


@examples(25)
@given(seed=seeds, B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 12),
       D=st.sampled_from([2, 8, 16]), causal=st.booleans())
def test_attention_equals_plain_softmax_attention(seed, B, H, T, D, causal):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
    out = model.attention(q, k, v, causal)
    assert torch.allclose(out, reference_attention(q, k, v, causal), atol=1e-5)


def test_model_imports_without_flash_attn(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # makes `import flash_attn` raise ImportError
    spec = importlib.util.spec_from_file_location("model_without_flash_attn", Path(model.__file__))
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh.flash_attn_func is None
    net = fresh.DiT(fresh.config_for("micro", vocab_size=7, seq_len=8)).eval()
    assert net(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1)).shape == (1, 4, 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_attention_falls_back_to_sdpa_on_cpu_even_with_flash_attn_present(monkeypatch, dtype):
    def flash_attn_func(*args, **kwargs):
        raise AssertionError("flash-attn must only be used on CUDA")

    monkeypatch.setattr(model, "flash_attn_func", flash_attn_func)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g).to(dtype) for _ in range(3))
    for causal in (False, True):
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        assert torch.equal(model.attention(q, k, v, causal), expected)


# ----------------------------------------------------------------------------- RoPE

def rotate(x, position, head_dim):
    cos, sin = model.Rotary(head_dim)(torch.tensor([position]))
    return model.apply_rotary(x.reshape(1, 1, 1, head_dim), cos, sin).reshape(head_dim)


@examples(40)
@given(seed=seeds, D=st.sampled_from([2, 4, 8, 16, 64]), m=st.integers(0, 256), n=st.integers(0, 256),
       shift=st.integers(0, 256))
def test_rotary_dot_product_depends_only_on_relative_position(seed, D, m, n, shift):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(D, generator=g), torch.randn(D, generator=g)
    before = rotate(q, m, D) @ rotate(k, n, D)
    after = rotate(q, m + shift, D) @ rotate(k, n + shift, D)
    # float32 angles up to ~512 rad carry ~3e-5 rad of rounding
    assert abs(before - after) <= 1e-3 * q.norm() * k.norm()


@examples(25)
@given(seed=seeds, D=st.sampled_from([2, 4, 8, 16]), position=st.integers(0, 64))
def test_rotary_rotates_pair_i_and_i_plus_half_by_position_times_base_power(seed, D, position):
    """Rotate-half convention, base 10000, over the full head dimension (SPEC.md §8)."""
    x = torch.randn(D, generator=torch.Generator().manual_seed(seed))
    half = D // 2
    angle = position * 10000.0 ** (-2 * torch.arange(half, dtype=torch.float64) / D)
    a, b = x[:half].double(), x[half:].double()
    expected = torch.cat([a * angle.cos() - b * angle.sin(), a * angle.sin() + b * angle.cos()])
    assert torch.allclose(rotate(x, position, D).double(), expected, atol=1e-4)


# ----------------------------------------------------------------------------- DiT

CFG = model.ModelConfig(vocab_size=11, seq_len=16, n_layer=2, n_head=2, n_embd=16, cond_dim=8)


def reference_dit(sd, tokens, sigma, n_head):
    """MDLM's DiT forward from the text of SPEC.md §8, in float64 on the state dict's tensors."""
    p = {k.removeprefix("backbone."): v.double() for k, v in sd.items()}
    linear = lambda x, name: F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))
    layer_norm = lambda x, name: F.layer_norm(x, x.shape[-1:], eps=1e-5) * p[f"{name}.weight"]
    modulate = lambda x, shift, scale: x * (1 + scale[:, None]) + shift[:, None]

    half = 128  # 256 frequencies, max period 10000, [cos, sin]
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    args = sigma.double()[:, None] * freqs
    c = F.silu(linear(F.silu(linear(torch.cat([args.cos(), args.sin()], -1), "sigma_map.mlp.0")),
                      "sigma_map.mlp.2"))

    x = p["vocab_embed.embedding"][tokens]
    N, L, W = x.shape
    D = W // n_head
    angles = torch.arange(L, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, D, 2) / D)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    rope = lambda u: u * cos + torch.cat([-u[..., D // 2:], u[..., :D // 2]], -1) * sin
    i = 0
    while f"blocks.{i}.norm1.weight" in p:
        b = f"blocks.{i}"
        modulation = linear(c, f"{b}.adaLN_modulation").chunk(6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        qkv = linear(modulate(layer_norm(x, f"{b}.norm1"), shift_msa, scale_msa), f"{b}.attn_qkv")
        q, k, v = qkv.reshape(N, L, 3, n_head, D).permute(2, 0, 3, 1, 4)    # (three h d) order
        attn = reference_attention(rope(q), rope(k), v, causal=False).transpose(1, 2).reshape(N, L, W)
        x = x + gate_msa[:, None] * linear(attn, f"{b}.attn_out")
        h = modulate(layer_norm(x, f"{b}.norm2"), shift_mlp, scale_mlp)
        x = x + gate_mlp[:, None] * linear(F.gelu(linear(h, f"{b}.mlp.0"), approximate="tanh"), f"{b}.mlp.2")
        i += 1
    shift, scale = linear(c, "output_layer.adaLN_modulation").chunk(2, -1)
    return linear(modulate(layer_norm(x, "output_layer.norm_final"), shift, scale), "output_layer.linear")


@examples(8)
@given(seed=seeds, N=st.integers(1, 3), L=st.integers(1, 16), prefix=st.sampled_from(["backbone.", ""]))
def test_dit_loaded_from_mdlm_state_dict_matches_reference_forward(seed, N, L, prefix):
    sd = mdlm_state_dict(CFG, seed, prefix)
    net = model.load_mdlm_state_dict(model.DiT(CFG), sd).eval()
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CFG.vocab_size + 1, (N, L), generator=g)
    sigma = 3 * torch.rand(N, generator=g) + 0.1  # time-conditioned: exercises the sigma MLP
    with torch.no_grad():
        logits = net(tokens, sigma)
    expected = reference_dit(sd, tokens, sigma, CFG.n_head)
    assert logits.shape == (N, L, CFG.vocab_size + 1)
    assert torch.allclose(logits.double(), expected, atol=1e-4, rtol=1e-4)


def test_load_mdlm_state_dict_rejects_a_missing_key():
    sd = mdlm_state_dict(CFG, 0)
    del sd["backbone.blocks.1.attn_out.weight"]
    with pytest.raises(ValueError):
        model.load_mdlm_state_dict(model.DiT(CFG), sd)


def test_load_mdlm_state_dict_rejects_a_vocabulary_of_the_wrong_size():
    sd = mdlm_state_dict(model.ModelConfig(**{**CFG.__dict__, "vocab_size": 12}), 0)
    with pytest.raises(ValueError):
        model.load_mdlm_state_dict(model.DiT(CFG), sd)


@examples(10)
@given(N=st.integers(1, 3), L=st.integers(1, 16), sigma=st.floats(0.0, 10.0), seed=seeds)
def test_dit_at_init_outputs_zero_logits_of_shape_n_l_v_plus_1(N, L, sigma, seed):
    torch.manual_seed(seed)
    net = model.DiT(CFG)
    tokens = torch.randint(0, CFG.vocab_size + 1, (N, L))
    logits = net(tokens, torch.full((N,), sigma))
    assert logits.shape == (N, L, CFG.vocab_size + 1)
    assert (logits == 0).all()


@examples(10)
@given(seed=seeds, N=st.integers(1, 3), L=st.integers(1, 16))
def test_head_on_selected_rows_equals_the_same_rows_of_the_full_output(seed, N, L):
    """The output layer applied to any subset of hidden rows, each with its own sequence's time
    conditioning, gives exactly those rows of the full forward pass."""
    net = model.load_mdlm_state_dict(model.DiT(CFG), mdlm_state_dict(CFG, seed)).eval()
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CFG.vocab_size + 1, (N, L), generator=g)
    sigma = 3 * torch.rand(N, generator=g)
    rows = torch.rand(N, L, generator=g) < 0.5
    with torch.no_grad():
        full = net(tokens, sigma)
        hidden, c = net.trunk(tokens, sigma)
        picked = net.head(hidden[rows], c[:, None].expand(N, L, -1)[rows])
    assert torch.allclose(picked, full[rows], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- GPT

GPT_CFG = model.ModelConfig(vocab_size=13, seq_len=16, n_layer=2, n_head=2, n_embd=32)


@examples(15)
@given(seed=seeds, N=st.integers(1, 3), prompt_len=st.integers(1, 8), new_tokens=st.integers(1, 8),
       top_p=st.sampled_from([1.0, 0.9]))
def test_gpt_generate_with_kv_cache_equals_generate_without(seed, N, prompt_len, new_tokens, top_p):
    torch.manual_seed(seed)
    gpt = model.GPT(GPT_CFG).eval()
    prompt = torch.randint(0, GPT_CFG.vocab_size, (N, prompt_len))
    runs = [gpt.generate(prompt, new_tokens, use_cache=use_cache, top_p=top_p, return_logits=True,
                         generator=torch.Generator().manual_seed(seed)) for use_cache in (True, False)]
    (cached, cached_logits), (full, full_logits) = runs
    assert cached.shape == (N, prompt_len + new_tokens)
    assert torch.equal(cached[:, :prompt_len], prompt)
    assert torch.equal(cached, full)
    assert torch.allclose(cached_logits, full_logits, atol=1e-5)


def test_gpt_generate_rejects_a_prompt_longer_than_the_context():
    """The last sampled token is never fed back, so prompt + new tokens may be context + 1."""
    gpt = model.GPT(GPT_CFG).eval()
    prompt = torch.zeros(1, 10, dtype=torch.long)
    assert gpt.generate(prompt, GPT_CFG.seq_len - 10 + 1).shape == (1, GPT_CFG.seq_len + 1)
    with pytest.raises(ValueError):
        gpt.generate(prompt, GPT_CFG.seq_len - 10 + 2)


def test_static_kv_cache_is_written_in_place_and_matches_uncached_logits():
    """The cache is allocated once, to the full length; feeding tokens one at a time into it
    gives the logits of the whole prefix recomputed, and writing past its length is an error."""
    torch.manual_seed(0)
    gpt = model.GPT(GPT_CFG).eval()
    tokens = torch.randint(0, GPT_CFG.vocab_size, (2, 10))
    cache = model.KVCache(10)
    with torch.no_grad():
        stepwise = [gpt(tokens[:, :4], cache)[:, -1]]
        storage = cache.k[0].data_ptr()
        for i in range(4, 10):
            stepwise.append(gpt(tokens[:, i:i + 1], cache, start=i)[:, -1])
        assert cache.k[0].data_ptr() == storage and cache.k[0].shape[2] == 10
        full = gpt(tokens)[:, 3:]
    torch.testing.assert_close(torch.stack(stepwise, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="KV cache"):
        cache.write(0, cache.k[0][:, :, :1], cache.v[0][:, :, :1], 10)
