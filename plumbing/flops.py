"""What a model's forward and training steps cost in FLOPs, and what a device can deliver: the
numerators and denominators of throughput and utilisation figures (train.py, bench.py)."""
import functools
import time

import torch

from plumbing.devices import sync

GPUS = {"a100": (312e12, 2.039e12), "h100": (989e12, 3.35e12), "h200": (989e12, 4.8e12)}  # bf16 FLOP/s, HBM B/s


def count_params(model, non_embedding=False):
    """Parameters of a network; non_embedding: without its token embedding (a gather, not a matmul)."""
    total = sum(p.numel() for p in model.parameters())
    return total - model.vocab_embed.embedding.numel() if non_embedding else total


def matmul_params(model):
    """Parameters applied at every position: not the embedding (a gather), nor the time
    embedding and adaLN modulation (once per sequence)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not any(part in name for part in ("vocab_embed", "sigma_map", "adaLN")))


def forward_flops(model, batch, seq_len):
    """One forward pass over batch x seq_len positions: 2 FLOPs per matmul weight and position,
    plus 4 B L^2 d per layer for QK^T and AV."""
    d, n = model.config.n_embd, model.config.n_layer
    return 2 * matmul_params(model) * batch * seq_len + 4 * batch * seq_len ** 2 * d * n


def training_flops_per_token(model, seq_len):
    """Forward and backward of one training token: 6 per weight, plus the attention (Kaplan et al.)."""
    cfg = model.config
    return 6 * count_params(model, non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * seq_len


def step_flops_per_token(model, seq_len, training_passes=1, forward_passes=0):
    """FLOPs of one training step per token of its batch, every network counted: each method says
    how many training passes (forward and backward of a trained network) and forward passes (of a
    frozen or detached one) a step makes, and a forward pass is a third of a training pass.
    Pretraining: (1, 0); SDTT: (1, teacher steps); IDLM: (2, 3); DCD: (1, 1)."""
    train = training_flops_per_token(model, seq_len)
    return training_passes * train + forward_passes * train / 3


@functools.lru_cache(maxsize=None)
def peak_flops(device):
    """The utilisation's denominator, (FLOP/s, what it is): the datasheet's dense bf16 peak of a
    known GPU (the precision training runs in there), else a measured matmul peak (bf16 on
    another GPU, float32 on a CPU, whose fast path it is)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).lower()
        known = next((bf16 for key, (bf16, _) in GPUS.items() if key in name), None)
        if known is not None:
            return known, f"the {name} bf16 datasheet peak"
        return matmul_peak_flops(device, dtype=torch.bfloat16), "the measured bf16 matmul peak"
    return matmul_peak_flops(device, n=512), "the measured float32 matmul peak"


def matmul_peak_flops(device, n=2048, repeats=10, dtype=torch.float32):
    """Measured matmul FLOP/s of this device in dtype."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def sampling_flops(model, seq_len, sequence_forwards, head_rows=None):
    """FLOPs of sampling: `sequence_forwards` passes of the trunk over seq_len positions, and the
    output layer at `head_rows` rows (default: every position of every pass, as the plain
    sampler does; the revealed-only sampler applies it once per generated token)."""
    head = 2 * model.output_layer.linear.weight.numel()
    trunk = forward_flops(model, 1, seq_len) - head * seq_len
    rows = sequence_forwards * seq_len if head_rows is None else head_rows
    return sequence_forwards * trunk + rows * head


def lower_bounds(dit, gpt, batch, seq_len, steps, gpu):
    """Roofline lower bounds in seconds, in bf16 (2 bytes a value): a forward pass takes at
    least max(FLOPs / peak FLOP/s, bytes moved / memory bandwidth).

    Diffusion, k passes over B x L positions: 2 P B L matmul FLOPs plus 4 B L^2 d n for QK^T
    and AV (width d, n layers); bytes: the weights, plus activations guessed at 16 values of
    width d per position and layer and the logits (diffusion is compute-bound either way).
    AR with a KV cache, L decode steps, the one at position p: 2 P B + 4 B p d n FLOPs; bytes:
    the weights plus the cache, 2 n B p d values. Every token re-reads all weights: memory-bound.
    P = matmul_params; weight bytes count every parameter but the embedding (only gathered).
    """
    peak, bandwidth = GPUS[gpu]
    d, n, L, B = dit.config.n_embd, dit.config.n_layer, seq_len, batch
    activation_bytes = 2 * B * L * (16 * d * n + dit.config.vocab_size + 1)
    one_pass = max(forward_flops(dit, B, L) / peak,
                   (2 * count_params(dit, non_embedding=True) + activation_bytes) / bandwidth)
    ar = sum(max((2 * matmul_params(gpt) * B + 4 * B * p * d * n) / peak,
                 2 * (count_params(gpt, non_embedding=True) + 2 * n * B * p * d) / bandwidth)
             for p in range(1, L + 1))
    return {"ar_s": ar, "diffusion_s": {k: k * one_pass for k in steps}}
