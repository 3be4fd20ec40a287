"""Tests of sample.py: prompts stay fixed, seeds reproduce, user mistakes end in one error line."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint
from evaluate import generate
from model import DiT, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
V, L = 8, 16
SYNTHETIC = {"kind": "synthetic", "vocab_size": V, "seq_len": L, "branching": 3, "seed": 0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU they run 100x slower with them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_dit():
    torch.manual_seed(0)
    model = DiT(ModelConfig(vocab_size=V, seq_len=L, n_layer=1, n_head=2, n_embd=16, cond_dim=16))
    torch.nn.init.normal_(model.output_layer.linear.weight)  # zero-initialised: make it say something
    return model.eval()


def save_tiny_checkpoint(path):
    model = tiny_dit()
    state = model.state_dict()
    checkpoint.save({"kind": "mdlm", "model_config": dataclasses.asdict(model.config), "model": state,
                     "ema": state, "data_meta": SYNTHETIC}, path)
    return path


def run_sample(*args):
    return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)


def assert_one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_same_seed_same_samples_and_prompt_positions_never_change():
    model, prompt = tiny_dit(), [1, 2, 3]
    def draw(seed):
        return generate(model, "mdlm", 5, L, 8, prompt=prompt, batch_size=2,
                        generator=torch.Generator().manual_seed(seed))[0]
    first = draw(0)
    assert torch.equal(first, draw(0)) and not torch.equal(first, draw(1))
    assert (first[:, :3] == torch.tensor(prompt)).all() and (first < V).all()


def test_sample_prints_prompted_text_and_writes_jsonl(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    out = tmp_path / "samples.jsonl"
    result = run_sample("--ckpt", str(ckpt), "--steps", "4", "--num-samples", "2", "--prompt", "a b c",
                        "--jsonl", str(out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(r["steps"] == 4 and len(r["tokens"]) == L for r in records)
    assert all(r["tokens"][:3] == [0, 1, 2] and r["text"] in result.stdout for r in records)


def test_missing_checkpoint_is_one_error_line(tmp_path):
    assert "does not exist" in assert_one_error_line(run_sample("--ckpt", str(tmp_path / "missing.pt")))
    assert "--ckpt" in assert_one_error_line(run_sample())


def test_prompt_longer_than_context_is_one_error_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    line = assert_one_error_line(run_sample("--ckpt", str(ckpt), "--prompt", " ".join(["a"] * (L + 4))))
    assert "prompt" in line


def test_steps_below_one_is_one_error_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    assert "--steps" in assert_one_error_line(run_sample("--ckpt", str(ckpt), "--steps", "0"))
