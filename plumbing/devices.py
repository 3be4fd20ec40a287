"""Where the work runs: choosing the device, its precision, synchronising it for timings, and
reading its peak memory. Every entry point asks here, so the choice is made once."""
import contextlib
import os
import re
from pathlib import Path

import torch

DEVICES = ["auto", "cpu", "cuda"]


def pick(name="auto"):
    """--device: "auto" takes the GPU when there is one. Asking for CUDA without one is a ValueError.
    On a GPU, float32 matmuls and convolutions may use TF32 (what runs outside bf16 autocast)."""
    if name not in DEVICES:
        raise ValueError(f"--device {name}: choose from {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but no CUDA GPU is available")
    device = torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast(device):
    """bf16 autocast on CUDA (autocast caches each weight's bf16 copy for the call); full float32
    on a CPU, whose fp32 path is the fast one (no bf16 units on most)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def free_memory(device):
    """Bytes this process could still allocate: the GPU's free memory, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return int(re.search(r"MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text())[1]) * 1024
    except (OSError, TypeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def training_bytes_per_sequence(vocab_rows, width, layers, seq_len):
    """A conservative estimate of the memory one training sequence takes: 8 float32 tensors as
    wide as the output layer (logits, log-probabilities, their gradients, a teacher's targets)
    and 40 bytes per layer and width for the activations kept for the backward pass."""
    return seq_len * (8 * 4 * vocab_rows + 40 * layers * width)


def compile_blocks(model):
    """torch.compile each transformer block in place (dynamic shapes: the samplers' batches and
    the AR cache's lengths vary). The first calls compile (seconds to minutes); later ones are
    faster where the compiler fuses the element-wise work around the matmuls. Networks without
    blocks (the exact denoiser) are left as they are."""
    for block in getattr(model, "blocks", []):
        block.compile(dynamic=True)
    return model


def sync(device):
    """Wait for the GPU's queue to drain (a no-op on a CPU): timings must include the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device, reset=False):
    """Peak bytes since the last reset (right after one: the current bytes). CUDA: the allocator's
    peak. CPU (Linux): the peak resident set VmHWM, reset to the current size by writing 5 to
    /proc/self/clear_refs; 0 elsewhere. (ru_maxrss cannot be reset, and a spawned child inherits the parent's.)"""
    device = torch.device(device)
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_allocated(device)
    try:
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
    except OSError:  # not Linux: no figure
        return 0


@contextlib.contextmanager
def eval_mode(model):
    """Dropout off while evaluating; the mode is restored after (train.py evaluates mid-run)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
