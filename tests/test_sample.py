"""Tests of sample.py: prompts stay fixed, seeds reproduce, user mistakes end in one error line."""
import json

import torch

from diffusion import MaskingProcess
from evaluate import generate
from helpers import L, V, assert_one_error_line, run_script, save_tiny_checkpoint, tiny_model


def tiny_dit():
    return tiny_model("mdlm")


def run_sample(*args):
    return run_script("sample.py", *args)


def test_same_seed_same_samples_and_prompt_positions_never_change():
    model, prompt = tiny_dit(), [1, 2, 3]
    def draw(seed):
        return generate(model, MaskingProcess(V), 5, L, 8, prompt=prompt, batch_size=2,
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


def test_samplers_by_name_semi_ar_past_the_context_and_topk(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    out = tmp_path / "samples.jsonl"
    result = run_sample("--ckpt", str(ckpt), "--steps", "4", "--num-samples", "2", "--sampler", "semi-ar",
                        "--seq-len", str(L + 8), "--prompt", "a b", "--jsonl", str(out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(r["tokens"]) == L + 8 and r["tokens"][:2] == [0, 1] for r in records)
    assert "semi-ar" in assert_one_error_line(run_sample("--ckpt", str(ckpt), "--seq-len", str(L + 8)))
    assert run_sample("--ckpt", str(ckpt), "--steps", "4", "--num-samples", "2", "--sampler", "topk").returncode == 0


def test_a_student_samples_with_the_steps_it_was_distilled_for_and_says_so(tmp_path):
    student = save_tiny_checkpoint(tmp_path / "round2.pt", "sdtt", sampling_steps=3, round=2,
                                   teacher_sampling_steps=6)
    out = tmp_path / "samples.jsonl"
    result = run_sample("--ckpt", str(student), "--num-samples", "2", "--jsonl", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (f"{student}: 3 steps, as it was distilled for (sdtt round 2, its teacher "
                                     "sampled with 6); --steps changes it")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["steps"] == 3 and r["checkpoint"] == str(student) and r["seed"] == 1337 for r in records)
    given = run_sample("--ckpt", str(student), "--num-samples", "2", "--steps", "5", "--jsonl", str(out))
    assert given.stderr == "" and json.loads(out.read_text().splitlines()[0])["steps"] == 5


def test_infill_keeps_the_text_around_the_gaps(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    out = tmp_path / "samples.jsonl"
    result = run_sample("--ckpt", str(ckpt), "--steps", "4", "--num-samples", "2", "--prompt", "a [MASK:3] b [MASK] c",
                        "--gap", "2", "--jsonl", str(out))
    assert result.returncode == 0, result.stderr
    for record in (json.loads(line) for line in out.read_text().splitlines()):
        tokens = record["tokens"]
        assert tokens[0] == 0 and tokens[4] == 1 and tokens[7] == 2 and len(tokens) == L


def test_infill_and_trace_mistakes_are_one_error_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    ar = save_tiny_checkpoint(tmp_path / "ar.pt", "ar", data_meta={"kind": "gpt2", "gpt2_ids": list(range(V - 1))})
    assert "malformed gap marker" in assert_one_error_line(run_sample("--ckpt", str(ckpt), "--prompt", "a [MASK:two]"))
    assert "longer than the" in assert_one_error_line(run_sample("--ckpt", str(ckpt), "--prompt", f"[MASK:{L + 1}]"))
    line = assert_one_error_line(run_sample("--ckpt", str(ckpt), str(ckpt), "--steps", "1", "2", "3"))
    assert "one per checkpoint" in line
    assert "AR model" in assert_one_error_line(run_sample("--ckpt", str(ar), "--trace", str(tmp_path / "t.html")))
    assert "diffusion model" in assert_one_error_line(run_sample("--ckpt", str(ar), "--prompt", "a [MASK:2] b"))
