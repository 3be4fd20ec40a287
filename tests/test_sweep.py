"""evaluation/sweep.py: checkpoints x steps into a table; SDTT rounds at their own steps; the exact
denoiser as a reference; user mistakes as one error line."""
import csv
import json

from helpers import SYNTHETIC, L, V, assert_one_error_line, run_script, save_tiny_checkpoint


def assert_one_error_line_of(*args):
    return assert_one_error_line(run_script(*args))


def test_cli_without_checkpoint_is_one_error_line(tmp_path):
    assert "does not exist" in assert_one_error_line_of("-m", "evaluation.sweep", "--ckpts", str(tmp_path / "missing.pt"))


def test_cli_steps_below_one_is_one_error_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    assert "at least 1" in assert_one_error_line_of("-m", "evaluation.sweep", "--ckpts", str(ckpt), "--steps", "0")


def test_cli_judge_with_another_vocabulary_is_one_error_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    judge = save_tiny_checkpoint(tmp_path / "ar.pt", "ar", {**SYNTHETIC, "vocab_size": V + 1})
    line = assert_one_error_line_of("-m", "evaluation.sweep", "--ckpts", str(ckpt), "--judge", str(judge))
    assert "different tokenizer/vocabulary" in line


def test_sweep_rounds_samples_each_sdtt_student_only_with_its_own_steps(tmp_path):
    """--rounds DIR: one line, round j's student at the steps it was distilled for (the SDTT
    paper's Figure 4), whatever --steps says; --steps applies to --ckpts only."""
    run = tmp_path / "sdtt"
    run.mkdir()
    for j, steps in enumerate((8, 4, 2)):
        save_tiny_checkpoint(run / f"round{j}.pt", "sdtt", sampling_steps=steps)
    teacher = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    result = run_script("-m", "evaluation.sweep", "--ckpts", str(teacher), "--rounds", str(run), "--steps", "16", "3",
                        "--num-samples", "4", "--out-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "sweep.csv") as f:
        rows = [(row["label"], int(row["steps"])) for row in csv.DictReader(f)]
    series = str(run / "round*.pt")
    assert rows == [(str(teacher), 16), (str(teacher), 3), (series, 2), (series, 4), (series, 8)]
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [(s["checkpoint"], s["steps"]) for s in samples[::4]] == [
        (str(teacher), 16), (str(teacher), 3), (str(run / "round2.pt"), 2), (str(run / "round1.pt"), 4),
        (str(run / "round0.pt"), 8)]
    assert all(s["seed"] == 0 and s["sampler"] == "cached" and len(s["tokens"]) == L for s in samples)
    assert [s["index"] for s in samples[:4]] == [0, 1, 2, 3]


def test_sweep_rounds_of_a_folder_without_rounds_is_one_error_line(tmp_path):
    assert "no SDTT round" in assert_one_error_line_of("-m", "evaluation.sweep", "--rounds", str(tmp_path))


# ----------------------------------------------------------------------------- the exact denoiser

def test_sweep_ranks_the_exact_denoiser_above_a_random_model(tmp_path):
    """evaluation.sweep --ckpts exact PATH: the perfect teacher, sampled in L steps, has a far lower
    GenPPL than an untrained model on the same source."""
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    result = run_script("-m", "evaluation.sweep", "--ckpts", "exact", str(ckpt), "--steps", str(L), "--num-samples", "16",
                        "--out-dir", str(tmp_path / "sweep"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        genppl = {row["label"]: float(row["genppl"]) for row in csv.DictReader(f)}
    assert list(genppl) == ["exact", str(ckpt)]
    assert genppl["exact"] < genppl[str(ckpt)] / 2


def test_sweep_of_the_exact_denoiser_alone_or_on_text_is_one_error_line(tmp_path):
    assert "needs a checkpoint" in assert_one_error_line(run_script("-m", "evaluation.sweep", "--ckpts", "exact"))
    text = save_tiny_checkpoint(tmp_path / "mdlm.pt", data_meta={"kind": "gpt2", "gpt2_ids": list(range(V))})
    line = assert_one_error_line(run_script("-m", "evaluation.sweep", "--ckpts", "exact", str(text), "--judge", str(text)))
    assert "only for the synthetic source" in line


def test_a_checkpoint_with_gpt2s_full_vocabulary_is_judged_by_gpt2_large_by_default(tmp_path):
    import pytest
    import torch
    pytest.importorskip("transformers")
    from helpers import mdlm_state_dict
    from model import ModelConfig
    torch.save(mdlm_state_dict(ModelConfig(vocab_size=50257, n_layer=1, n_head=2, n_embd=8, cond_dim=8), 0),
               tmp_path / "owt.pt")
    result = run_script("-m", "evaluation.sweep", "--ckpts", str(tmp_path / "owt.pt"), "--steps", "1", "--num-samples", "1",
                        "--seq-len", "4", "--out-dir", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert "could not load judge 'gpt2-large'" in assert_one_error_line(result)
