"""Why the reverse KL did not help SDTT on the small embedded teacher (results/embedded.md, "Where the embedded default differs from the papers").

    python scripts/sdtt_target_entropy.py --ckpt out/mdlm/ckpt.pt --steps 8

SDTT's targets are random: they depend on the tokens the teacher draws in its first step. The
student's one-step prediction minimises the *expected* divergence to them, and for the
reverse KL that minimiser is their normalised geometric mean, softmax(E[log target]).
(For the forward KL it is the arithmetic mean.) For masked positions of validation batches,
this prints the entropy of the teacher's own prediction, of the arithmetic mean and of the
geometric mean of `--draws` target draws. If the geometric mean is flatter than the teacher,
distilling with the reverse KL raises the student's entropy instead of sharpening it.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sdtt  # noqa: E402
from data import load_data  # noqa: E402
from loading import checkpoint  # noqa: E402
from plumbing import cli  # noqa: E402


@dataclass
class Config:
    ckpt: str = cli.flag("out/mdlm/ckpt.pt", "an MDLM checkpoint")
    steps: int = cli.flag(8, "the teacher's sampling steps (step size 1/steps)", at_least=1)
    draws: int = cli.flag(16, "target draws per noised batch", at_least=1)
    batch_size: int = cli.flag(32, "validation sequences", at_least=1)


def entropy(log_p):
    return -(log_p.exp() * log_p).sum(-1).mean().item()


@torch.no_grad()
def main():
    cfg = cli.parse_config(Config, __doc__.split("\n\n")[0])
    model, ckpt = checkpoint.load_model(cfg.ckpt, device="cpu")
    process, seq_len = checkpoint.process_of(ckpt), model.config.seq_len
    real = slice(0, process.vocab_size)
    trained = ckpt["train_config"]
    data = load_data(trained["data"], trained["vocab_size"], seq_len)
    x = data.batch("val", cfg.batch_size, seq_len, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    for t_value in (0.9, 0.6, 0.3):
        t = torch.full((len(x),), t_value)
        x_t = process.forward_sample(x, t, torch.rand(x.shape))
        masked = process.loss_positions(x_t)
        teacher = process.denoise(model, x_t, t)[masked][:, real]
        targets = torch.stack([sdtt.teacher_targets(model, x_t, t, 2, 1 / cfg.steps, process)[masked][:, real]
                               for _ in range(cfg.draws)])
        arithmetic = torch.logsumexp(targets, 0) - torch.log(torch.tensor(float(cfg.draws)))
        geometric = torch.log_softmax(targets.mean(0), -1)
        print(f"t = {t_value}: entropy of the teacher {entropy(teacher):.3f}, of the arithmetic mean of the "
              f"targets {entropy(arithmetic):.3f}, of their geometric mean {entropy(geometric):.3f} nats")


if __name__ == "__main__":
    cli.run_command(main)
