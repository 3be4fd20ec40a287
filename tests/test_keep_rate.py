"""scripts/keep_rate.py: how often a denoiser keeps the tokens that noise left alone."""
import importlib.util
from pathlib import Path

import torch

from helpers import assert_one_error_line, run_script, save_tiny_checkpoint
from processes.uniform import UniformProcess

V = 8
spec = importlib.util.spec_from_file_location("keep_rate", Path(__file__).parents[1] / "scripts" / "keep_rate.py")
keep_rate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(keep_rate)


class Copier(torch.nn.Module):
    """Logits `scale` at the input token: keeps every token (scale > 0) or none (scale < 0)."""
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, z, sigma):
        return self.scale * torch.nn.functional.one_hot(z, V).float()


def test_a_copier_keeps_every_clean_token_and_an_anti_copier_none():
    x = torch.randint(V, (16, 32), generator=torch.Generator().manual_seed(0))
    process = UniformProcess(V)
    for t in (1e-3, 0.5):
        kept, prob = keep_rate.keep_rate(Copier(20.0), process, x, t, torch.Generator().manual_seed(1))
        assert kept == 1.0 and abs(prob - 1 / (1 + (V - 1) * torch.exp(torch.tensor(-20.0)).item())) < 1e-6
        kept, prob = keep_rate.keep_rate(Copier(-20.0), process, x, t, torch.Generator().manual_seed(1))
        assert kept == 0.0 and prob < 1e-8


def test_the_carry_over_keeps_every_token_of_an_absorbing_model(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "model.pt")
    result = run_script("scripts/keep_rate.py", "--ckpt", str(ckpt), "--num-sequences", "4", "--times", "0.5")
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[-1].split("|")
    assert row[1].strip() == "0.5" and float(row[2]) == 1.0 and float(row[3]) == 1.0


def test_an_autoregressive_model_is_refused_in_one_line(tmp_path):
    ar = save_tiny_checkpoint(tmp_path / "ar.pt", kind="ar")
    assert_one_error_line(run_script("scripts/keep_rate.py", "--ckpt", str(ar)))


def test_a_time_past_one_is_refused_in_one_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "model.pt")
    assert "(0, 1]" in assert_one_error_line(run_script("scripts/keep_rate.py", "--ckpt", str(ckpt), "--times", "1.5"))
