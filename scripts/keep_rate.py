"""How often a diffusion model keeps a token that noise did not touch: for validation text x and
a few times t, the fraction of unchanged positions (z_t = x) where argmax x_theta(z_t, t) = x, and
the mean probability x_theta puts there on x.

    python scripts/keep_rate.py --ckpt out/uniform/ckpt.pt

For the absorbing process the carry-over makes both 1 by construction. A uniform-state model must
learn to keep (every position may be noise), and the exact denoiser, at small t, keeps almost
every clean token. Greedy-Tail takes the argmax at t_min at every position: a model that keeps few
tokens there replaces the rest with its context-only guess, so its samples lose entropy.
"""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import held_out_data, tokenizer_from_meta  # noqa: E402
from evaluate import markdown_table  # noqa: E402
from loading import checkpoint  # noqa: E402
from plumbing.cli import flag, parse_config, run_command  # noqa: E402


@dataclass
class KeepConfig:
    ckpt: str = flag("out/uniform/ckpt.pt", "a diffusion checkpoint")
    data: Optional[str] = flag(None, "validation text as train.py's --data (default: what the checkpoint trained on; "
                                     "a synthetic checkpoint always uses its own source)")
    times: List[float] = flag([1e-5, 1e-3, 0.1, 0.5], "the times t to measure at", above=0)
    num_sequences: int = flag(32, "validation sequences", at_least=1)
    seed: int = flag(0, "random seed of the batch and the noise")


@torch.no_grad()
def keep_rate(model, process, x, t, generator):
    """(argmax keeps x, mean x_theta(x)) over the positions with z_t = x, at time t."""
    times = torch.full((x.shape[0],), t)
    z_t = process.forward_sample(x, times, torch.rand(x.shape, generator=generator))
    log_x = process.denoise(model, z_t, times)[..., :process.vocab_size]
    clean = z_t == x
    kept = (log_x.argmax(-1) == x)[clean].float().mean().item()
    return kept, log_x.gather(-1, x[..., None]).squeeze(-1)[clean].exp().mean().item()


def main():
    cfg = parse_config(KeepConfig, __doc__.split("\n\n")[0])
    if max(cfg.times) > 1:
        raise ValueError(f"--times are diffusion times in (0, 1], got {max(cfg.times)}")
    model, ckpt = checkpoint.load_model(cfg.ckpt)
    process = checkpoint.process_of(ckpt)
    if process is None:
        raise ValueError(f"{cfg.ckpt} is an autoregressive model: it has no denoiser to measure")
    seq_len, meta = ckpt["model_config"]["seq_len"], ckpt["data_meta"]
    data = held_out_data(cfg.data or ckpt.get("train_config", {}).get("data"), meta,
                         tokenizer_from_meta(meta).vocab_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    x = data.batch("val", cfg.num_sequences, seq_len, generator)
    rows = []
    for t in cfg.times:
        kept, prob = keep_rate(model, process, x, t, generator)
        rows.append({"t": f"{t:g}", "argmax keeps x": f"{kept:.3f}", "mean x_theta(x)": f"{prob:.3f}"})
    print(f"{cfg.ckpt} ({process.name} process), {cfg.num_sequences} validation sequences of {seq_len}:")
    print(markdown_table(rows, ["t", "argmax keeps x", "mean x_theta(x)"]))


if __name__ == "__main__":
    run_command(main)
