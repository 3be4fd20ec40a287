"""train.py end to end on tiny settings: learning, resume after SIGKILL, DDP, accumulation, bad input."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import config
import helpers
from training import run as training_run
from training.step import Env, fit_micro_batch
from data import MarkovSource
from diffusion import LogLinear, MaskingProcess
from loading import checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--data", "synthetic", "--size", "micro", "--seq-len", "16", "--batch-size", "8", "--eval-every", "0"]


def train(*args, check=True, launcher=(sys.executable,)):
    result = subprocess.run([*launcher, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check and result.returncode != 0:
        raise AssertionError(result.stderr[-2000:])
    return result


def weights(path, key="model"):
    return checkpoint.read(path)[key]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), k


def val_curve(out):
    records = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    return [r["val"] for r in records if "val" in r]


@pytest.mark.parametrize("kind", ["mdlm", "ar"])
def test_tiny_run_lowers_validation_loss(tmp_path, kind):
    """Validation NELBO (diffusion) / NLL (AR) falls. Uniform predictions give log(16) = 2.77
    nats per token; the synthetic chain's entropy rate is below 1, so there is room to learn."""
    train("--model", kind, *TINY, "--batch-size", "32", "--iters", "150", "--eval-every", "50", "--lr", "1e-2", "--ema", "0",
          "--out-dir", str(tmp_path))
    curve = val_curve(tmp_path)
    assert len(curve) == 3
    assert curve[-1] < curve[0] and curve[-1] < math.log(16) - 0.3, curve  # untrained: log(16)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL mid-run, then --resume: the final weights equal those of an uninterrupted run."""
    args = [*TINY, "--iters", "40", "--ckpt-every", "1"]  # long enough that the kill lands mid-run
    train(*args, "--out-dir", str(tmp_path / "straight"))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, "--out-dir", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ckpt = out / "ckpt.pt"
        if ckpt.exists() and checkpoint.read(ckpt)["step"] >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.read(out / "ckpt.pt")["step"] < 40, "the run finished before it could be killed"
    train(*args, "--out-dir", str(out), "--resume")
    for key in ("model", "ema"):
        assert_same_weights(weights(out / "ckpt.pt", key), weights(tmp_path / "straight" / "ckpt.pt", key))


def test_ddp_two_processes_match_one_process_with_the_combined_batch(tmp_path):
    """torchrun with 2 gloo processes, each taking half of every batch, ends where one process
    with the whole batch does (3 AdamW steps; float32 reduction order -> 1e-5)."""
    args = [*TINY, "--iters", "3", "--lr", "1e-2"]
    train(*args, "--out-dir", str(tmp_path / "one"))
    train(*args, "--out-dir", str(tmp_path / "two"),
          launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"))
    assert_same_weights(weights(tmp_path / "two" / "ckpt.pt"), weights(tmp_path / "one" / "ckpt.pt"), atol=1e-5)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    args = [*TINY, "--iters", "3", "--lr", "1e-2"]
    train(*args, "--out-dir", str(tmp_path / "full"))
    train(*args, "--micro-batch-size", "2", "--out-dir", str(tmp_path / "accum"))
    assert_same_weights(weights(tmp_path / "accum" / "ckpt.pt"), weights(tmp_path / "full" / "ckpt.pt"), atol=1e-5)


def test_checkpoints_load_with_weights_only_and_truncation_is_a_clear_error(tmp_path):
    train(*TINY, "--iters", "2", "--out-dir", str(tmp_path))
    path = tmp_path / "ckpt.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["kind"] == "mdlm" and ckpt["finished"] and ckpt["data_meta"]["kind"] == "synthetic"
    model, _ = checkpoint.load_model(path)
    assert model.config.seq_len == 16
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        checkpoint.read(path)
    result = train(*TINY, "--iters", "4", "--out-dir", str(tmp_path), "--resume", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1
    assert lines[0].startswith(f"error: checkpoint {path} is truncated or corrupt")


@pytest.mark.parametrize("args, message", [
    (["--seq-len", "1"], "--seq-len must be at least 2"),
    (["--batch-size", "3", "--micro-batch-size", "2"], "--micro-batch-size 2 must divide"),
    (["--iters", "0"], "--iters must be at least 1"),
    (["--data", "no/such/file.txt"], "not shakespeare, synthetic, openwebtext or a text file"),
    (["--distill", "sdtt", "--teacher", "no_such.pt"], "checkpoint no_such.pt does not exist"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    result = train(*TINY, "--out-dir", str(tmp_path), *args, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert not list(tmp_path.glob("*.pt")), "a failed run left a checkpoint behind"


def test_wrong_checkpoint_kind_is_refused(tmp_path):
    train("--model", "ar", *TINY, "--iters", "1", "--out-dir", str(tmp_path / "ar"))
    result = train(*TINY, "--distill", "sdtt", "--teacher", str(tmp_path / "ar" / "ckpt.pt"),
                   "--out-dir", str(tmp_path / "sdtt"), check=False)
    assert result.returncode != 0 and "holds a ar model; expected mdlm or sedd or sdtt or idlm" in result.stderr


def test_sdtt_divergence_is_the_papers_at_full_size_the_mse_on_cpu_presets_and_a_flag_overrides_both():
    cpu, full = "tiny", "small"
    assert config.resolve(config.TrainConfig(distill="sdtt"), full).divergence == "reverse_kl"
    assert config.resolve(config.TrainConfig(distill="sdtt"), cpu).divergence == "mse"
    chosen = config.TrainConfig(distill="sdtt", divergence="reverse_kl")
    assert config.resolve(chosen, cpu).divergence == "reverse_kl"
    assert config.resolve(config.TrainConfig(distill="sdtt", preset="paper"), cpu).divergence == "reverse_kl"


def test_the_presets_are_two_tables_with_a_row_for_every_method_and_the_run_prints_its_config(tmp_path):
    assert set(config.PAPER) == set(config.CPU) == {"mdlm", "sedd", "ar", *config.METHODS}
    result = train(*TINY, "--iters", "1", "--out-dir", str(tmp_path))
    block = result.stdout.split("\nmdlm:")[0]
    assert block.startswith("config:") and "--preset cpu" in block and "--lr 0.001" in block and "--iters 1" in block


def test_log_jsonl_gets_tokens_per_second_mfu_and_peak_memory_every_interval(tmp_path):
    train(*TINY, "--iters", "5", "--log-every", "2", "--out-dir", str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    rates = [r for r in records if "tokens_per_s" in r]
    assert [r["step"] for r in rates] == [2, 4, 5]
    for r in rates:
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and r["peak_memory_gb"] > 0 and "loss" in r


def test_the_checkpoint_is_written_before_validation_runs(tmp_path, monkeypatch):
    from diffusion import LogLinear, MaskingProcess
    from helpers import tiny_model
    from training.step import make_ema, trained
    model = tiny_model()
    cfg = config.TrainConfig(lr=1e-3, warmup=1, batch_size=2, seq_len=model.config.seq_len, micro_batch_size=0,
                             grad_clip=1.0, iters=3, eval_every=1, ckpt_every=1, log_every=1, out_dir=str(tmp_path))
    env = Env(torch.device("cpu"))
    process = MaskingProcess(model.config.vocab_size, LogLinear())
    data = MarkovSource(vocab_size=model.config.vocab_size, seq_len=model.config.seq_len)
    run = training_run.Run(cfg, env, data, process, "mdlm", {})
    run.start([trained(model, cfg.lr, cfg, env)], make_ema(model, 0.5), model=model)
    run.begin("test", 0, passes=(1, 0))

    def validation(*args):
        assert (tmp_path / "ckpt.pt").exists(), "validation ran before the checkpoint"
        raise MemoryError("validation ran out of memory")
    monkeypatch.setattr(training_run, "validation", validation)
    with pytest.raises(MemoryError):
        run.after_step(1, {"loss": 1.0})
    assert checkpoint.read(tmp_path / "ckpt.pt")["step"] == 1


@pytest.mark.parametrize("sequences_that_fit, expected", [(100, 0), (8.5, 8), (5.5, 4), (0.3, 1)])
def test_the_default_micro_batch_is_the_largest_divisor_of_the_batch_that_fits(monkeypatch, sequences_that_fit,
                                                                                expected):
    from model import config_for
    from plumbing import devices
    model_cfg = config_for("small", vocab_size=50257, seq_len=1024)
    each = devices.training_bytes_per_sequence(50258, 768, 12, 1024)
    monkeypatch.setattr(devices, "free_memory", lambda device: sequences_that_fit * each / 0.6)  # 60% is used
    cfg = config.TrainConfig(batch_size=24, seq_len=1024)
    fitted = fit_micro_batch(cfg, Env(torch.device("cpu")), model_cfg)
    assert fitted.micro_batch_size == expected
    chosen = config.TrainConfig(batch_size=24, micro_batch_size=3)
    assert fit_micro_batch(chosen, Env(torch.device("cpu")), model_cfg) == chosen


def test_micro_batched_validation_equals_one_pass():
    model, process = helpers.random_dit(0, helpers.V, helpers.L), MaskingProcess(helpers.V, LogLinear())
    source, env = MarkovSource(vocab_size=helpers.V, seq_len=helpers.L), Env(torch.device("cpu"))

    def value(micro_batch):
        cfg = config.TrainConfig(batch_size=6, seq_len=helpers.L, eval_batches=2, micro_batch_size=micro_batch)
        return training_run.validation(model, process, source, cfg, env)
    whole = value(0)
    assert value(4) == pytest.approx(whole, rel=1e-6)
    assert value(1) == pytest.approx(whole, rel=1e-6)
