"""What the perfect MDLM teacher reaches in few steps on the synthetic source (README, "Results").

    python scripts/exact_ceiling.py --seq-lens 64 128 256

For each sequence length L it samples the exact denoiser (exact.py) in L/32 ... L steps and
prints the exact GenPPL and token entropy. The gap between L/16 steps and L steps is the price
of drawing the tokens of one step independently: each step of L/16 reveals 16 tokens on
average, and the shorter the sequence, the more of them are neighbours that the Markov chain
couples. A distilled student that matches the teacher at L in L/16 steps must close that gap.
"""
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cli  # noqa: E402
from data import load_data  # noqa: E402
from diffusion import MaskingProcess  # noqa: E402
from evaluate import markdown_table, token_entropy  # noqa: E402
from exact import ExactDenoiser  # noqa: E402
from samplers import make_sampler  # noqa: E402


@dataclass
class Config:
    seq_lens: list[int] = cli.flag([64, 128, 256], "sequence lengths L (32 or more)")
    num_samples: int = cli.flag(256, "samples per row", at_least=1)
    seed: int = cli.flag(0, "sampling seed")


def main():
    cfg = cli.parse_config(Config, __doc__.split("\n\n")[0])
    rows = []
    for seq_len in cfg.seq_lens:
        if seq_len < 32:
            raise ValueError(f"--seq-lens: {seq_len} is below 32, so L/32 steps would be none")
        source = load_data("synthetic", seq_len=seq_len)
        denoiser, process = ExactDenoiser(source), MaskingProcess(source.vocab_size)
        for divisor in (32, 16, 8, 4, 2, 1):
            x, _ = make_sampler()(denoiser, process, process.prior(cfg.num_samples, seq_len, "cpu"),
                                  seq_len // divisor, generator=torch.Generator().manual_seed(cfg.seed))
            rows.append({"L": seq_len, "steps": f"L/{divisor} = {seq_len // divisor}",
                         "genppl": math.exp(-source.log_prob(x).mean().item() / seq_len),
                         "entropy": token_entropy(x).mean().item()})
        rows.append({"L": seq_len, "steps": "data", "genppl": math.exp(source.entropy_rate_bound()),
                     "entropy": token_entropy(source.sample(cfg.num_samples, torch.Generator().manual_seed(cfg.seed)))
                     .mean().item()})
    print(markdown_table(rows, ["L", "steps", "genppl", "entropy"]))


if __name__ == "__main__":
    cli.run(main)
