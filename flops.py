"""What a model's forward and training steps cost in FLOPs, and what a device can deliver: the
numerators and denominators of throughput and utilisation figures (train.py, bench.py)."""
import time

import torch

from devices import sync
from model import count_params

GPUS = {"a100": (312e12, 2.039e12), "h100": (989e12, 3.35e12), "h200": (989e12, 4.8e12)}  # bf16 FLOP/s, HBM B/s


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


def matmul_peak_flops(device, n=2048, repeats=10):
    """Measured float32 matmul FLOP/s of this device (the denominator of the utilisation)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
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
