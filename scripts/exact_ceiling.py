"""What the perfect teacher reaches in few steps on the synthetic source (results/reproduce.md).

    python scripts/exact_ceiling.py --seq-lens 64 128 256 [--process uniform]

For each sequence length L it samples the exact denoiser (evaluation/exact.py) in L/32 ... L steps and
prints the exact GenPPL and token entropy: the perfect MDLM for the absorbing process (sampler
"cached"), the perfect UDLM (the leave-one-out posterior) for the uniform one (samplers
"ancestral" and "greedy-tail"). The gap between L/16 steps and L steps is the price of drawing
the tokens of one step independently: the shorter the sequence, the more of the tokens one step
changes are neighbours that the Markov chain couples. A distilled student that matches the
teacher at L in L/16 steps must close that gap.
"""
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import load_data  # noqa: E402
from evaluate import markdown_table, token_entropy  # noqa: E402
from evaluation.exact import ExactDenoiser, ExactUniformDenoiser  # noqa: E402
from plumbing import cli  # noqa: E402
from processes.registry import PROCESSES  # noqa: E402
from samplers import make_sampler  # noqa: E402

SAMPLERS = {"absorbing": ["cached"], "uniform": ["ancestral", "greedy-tail"]}


@dataclass
class Config:
    seq_lens: list[int] = cli.flag([64, 128, 256], "sequence lengths L (32 or more)")
    num_samples: int = cli.flag(256, "samples per row", at_least=1)
    seed: int = cli.flag(0, "sampling seed")
    process: str = cli.flag("absorbing", "the diffusion process of the exact teacher", choices=list(SAMPLERS))


def teacher(source, kind):
    """The exact denoiser of `source` and its process."""
    process = PROCESSES[kind](source.vocab_size)
    if kind == "uniform":
        return ExactUniformDenoiser(source, process), process
    return ExactDenoiser(source), process


def main():
    cfg = cli.parse_config(Config, __doc__.split("\n\n")[0])
    rows = []
    for seq_len in cfg.seq_lens:
        if seq_len < 32:
            raise ValueError(f"--seq-lens: {seq_len} is below 32, so L/32 steps would be none")
        source = load_data("synthetic", seq_len=seq_len)
        denoiser, process = teacher(source, cfg.process)
        for name in SAMPLERS[cfg.process]:
            for divisor in (32, 16, 8, 4, 2, 1):
                generator = torch.Generator().manual_seed(cfg.seed)
                x, _ = make_sampler(name)(denoiser, process, process.prior(cfg.num_samples, seq_len, "cpu", generator),
                                          seq_len // divisor, generator=generator)
                rows.append({"L": seq_len, "sampler": name, "steps": f"L/{divisor} = {seq_len // divisor}",
                             "genppl": math.exp(-source.log_prob(x).mean().item() / seq_len),
                             "entropy": token_entropy(x).mean().item()})
        rows.append({"L": seq_len, "sampler": "-", "steps": "data", "genppl": math.exp(source.entropy_rate_bound()),
                     "entropy": token_entropy(source.sample(cfg.num_samples, torch.Generator().manual_seed(cfg.seed)))
                     .mean().item()})
    print(markdown_table(rows, ["L", "sampler", "steps", "genppl", "entropy"]))


if __name__ == "__main__":
    cli.run_command(main)
