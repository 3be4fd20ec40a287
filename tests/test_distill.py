"""The distillations, through `python train.py --distill ...`: SDTT rounds that chain (each teacher is
the previous round's student), a run resumed at a round boundary, IDLM end to end, and the
entry point's errors."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import config
import data
import helpers
from helpers import ROOT, assert_one_error_line, run_script
from loading import checkpoint

SEQ_LEN = 16


def synthetic_teacher(path):
    """A random micro DiT saved as a finished MDLM checkpoint of the synthetic source."""
    synthetic = data.load_data("synthetic", seq_len=SEQ_LEN)
    teacher = helpers.random_dit(0, synthetic.vocab_size, SEQ_LEN)
    state = teacher.state_dict()
    checkpoint.save({"kind": "mdlm", "model_config": dataclasses.asdict(teacher.config), "model": state,
                     "ema": state, "data_meta": synthetic.meta(), "finished": True}, path)
    return state


def distill(*args):
    micro = ["--data", "synthetic", "--size", "micro", "--seq-len", str(SEQ_LEN), "--batch-size", "4",
             "--eval-every", "0", "--eval-batches", "1", "--judge", "exact", "--eval-samples", "4"]
    result = run_script("train.py", *micro, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# train.py run as a script, with sdtt.distillation_loss wrapped to save the weights of the
# teacher it is given at the first call of each round (a round is known by its step size).
RECORDING_RUN = """
import inspect, runpy, sys, torch, sdtt
original, teachers, record = sdtt.distillation_loss, {}, sys.argv[1]
def recording(*args, **kwargs):
    bound = inspect.signature(original).bind(*args, **kwargs)
    delta = bound.arguments["delta"]
    if delta not in teachers:
        teachers[delta] = {k: v.clone() for k, v in bound.arguments["teacher"].state_dict().items()}
        torch.save(teachers, record)
    return original(*args, **kwargs)
sdtt.distillation_loss = recording
sys.argv = ["train.py"] + sys.argv[2:]
runpy.run_path("train.py", run_name="__main__")
"""


def test_two_rounds_of_train_py_halve_the_steps_and_round_1_is_taught_by_round_0s_student(tmp_path):
    seq_len = SEQ_LEN
    state = synthetic_teacher(tmp_path / "teacher.pt")
    out, recorded = tmp_path / "sdtt", tmp_path / "teachers.pt"
    result = subprocess.run(
        [sys.executable, "-c", RECORDING_RUN, str(recorded), "--distill", "sdtt", "--data", "synthetic",
         "--size", "micro", "--seq-len", str(seq_len), "--batch-size", "4", "--iters", "3", "--rounds", "2",
         "--eval-every", "0", "--eval-batches", "1", "--ckpt-every", "1", "--teacher", str(tmp_path / "teacher.pt"),
         "--judge", "exact", "--eval-samples", "4", "--out-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    rounds = [checkpoint.read(out / f"round{j}.pt") for j in range(2)]
    assert [r["kind"] for r in rounds] == ["sdtt", "sdtt"]
    assert [r["sampling_steps"] for r in rounds] == [seq_len // 2, seq_len // 4]
    assert [(r["round"], r["teacher_sampling_steps"]) for r in rounds] == [(0, seq_len), (1, seq_len // 2)]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(s["checkpoint"], s["steps"]) for s in samples[-8:]] == (
        [(str(out / "round0.pt"), seq_len // 2)] * 4 + [(str(out / "round1.pt"), seq_len // 4)] * 4)
    assert all(len(s["tokens"]) == seq_len and s["seed"] == 0 for s in samples)

    teachers = torch.load(recorded, weights_only=True)
    assert sorted(teachers) == pytest.approx([1 / seq_len, 2 / seq_len], rel=1e-4)  # 16 -> 8 -> 4 steps
    round0_teacher, round1_teacher = (teachers[d] for d in sorted(teachers))
    assert all(torch.equal(round0_teacher[k], v) for k, v in state.items())
    assert all(torch.equal(round1_teacher[k], v) for k, v in rounds[0]["model"].items())
    assert any(not torch.equal(state[k], v) for k, v in rounds[0]["model"].items())  # round 0 did learn


def test_a_run_resumed_at_a_round_boundary_ends_where_an_uninterrupted_run_does(tmp_path):
    """Round 0 alone, then --resume with two rounds: round 1 is taught by the saved round-0 student
    and continues the optimizer and EMA, so every weight equals that of a straight two-round run."""
    synthetic_teacher(tmp_path / "teacher.pt")
    common = ["--distill", "sdtt", "--iters", "3", "--teacher", str(tmp_path / "teacher.pt")]
    distill(*common, "--rounds", "2", "--out-dir", str(tmp_path / "straight"))
    distill(*common, "--rounds", "1", "--out-dir", str(tmp_path / "split"))
    distill(*common, "--rounds", "2", "--out-dir", str(tmp_path / "split"), "--resume")
    for name in ("round0.pt", "round1.pt"):
        straight, split = (checkpoint.read(tmp_path / run / name) for run in ("straight", "split"))
        for key in ("model", "ema"):
            assert straight[key].keys() == split[key].keys()
            assert all(torch.equal(straight[key][k], split[key][k]) for k in straight[key]), (name, key)


def test_idlm_runs_end_to_end_and_its_checkpoint_rebuilds_the_student_and_the_fake(tmp_path):
    synthetic_teacher(tmp_path / "teacher.pt")
    result = distill("--distill", "idlm", "--iters", "2", "--teacher", str(tmp_path / "teacher.pt"),
                     "--out-dir", str(tmp_path / "idlm"))
    assert "| IDLM |" in result.stdout and "| teacher |" in result.stdout
    ckpt = checkpoint.read(tmp_path / "idlm" / "ckpt.pt")
    assert ckpt["kind"] == "idlm" and ckpt["finished"]
    assert ckpt["sampling_steps"] == 1  # L/32 steps, at least one
    assert ckpt["round"] == 0 and ckpt["teacher_sampling_steps"] == SEQ_LEN
    assert ckpt["process"] == {"kind": "absorbing", "schedule": "loglinear", "eps": 1e-3}
    assert ckpt["fake"].keys() == ckpt["model"].keys() and len(ckpt["optimizers"]) == 2
    model, _ = checkpoint.load_model(tmp_path / "idlm" / "ckpt.pt")
    assert model.config.seq_len == SEQ_LEN


def test_without_a_final_table_no_judge_is_loaded_or_trained(tmp_path):
    """--eval-samples 0: the judge is never read (a missing file is no error), so the default AR
    judge is not trained either; with a table the same judge is refused before training."""
    synthetic_teacher(tmp_path / "teacher.pt")
    missing = str(tmp_path / "no_judge.pt")
    result = distill("--distill", "idlm", "--iters", "1", "--teacher", str(tmp_path / "teacher.pt"),
                     "--judge", missing, "--eval-samples", "0", "--out-dir", str(tmp_path / "idlm"))
    assert "GenPPL" not in result.stdout and checkpoint.read(tmp_path / "idlm" / "ckpt.pt")["finished"]
    refused = run_script("train.py", "--distill", "idlm", "--data", "synthetic", "--iters", "1", "--teacher",
                         str(tmp_path / "teacher.pt"), "--judge", missing, "--out-dir", str(tmp_path / "again"))
    assert "no_judge.pt" in assert_one_error_line(refused)
    assert not (tmp_path / "again" / "ckpt.pt").exists()


def test_l_follows_the_teacher_unless_a_shorter_one_is_given(tmp_path):
    synthetic_teacher(tmp_path / "teacher.pt")
    teacher = str(tmp_path / "teacher.pt")
    _, ckpt = checkpoint.load_model(teacher)

    def resolved(cfg):
        return config.from_teacher(cfg, ckpt, checkpoint.process_of(ckpt), main=False)
    assert resolved(config.TrainConfig(distill="sdtt")).seq_len == SEQ_LEN
    assert resolved(config.TrainConfig(distill="sdtt", seq_len=SEQ_LEN // 2)).seq_len == SEQ_LEN // 2
    longer = run_script("train.py", "--distill", "sdtt", "--data", "synthetic", "--teacher", teacher,
                        "--seq-len", str(2 * SEQ_LEN), "--out-dir", str(tmp_path / "sdtt"))
    assert f"longer than the teacher's L = {SEQ_LEN}" in assert_one_error_line(longer)


def test_distill_without_a_method_is_one_error_line():
    assert "--distill" in assert_one_error_line(run_script("train.py", "--distill"))


def test_a_teacher_with_gpt2s_full_vocabulary_implies_openwebtext_and_gpt2_large_unless_told(capsys):
    from diffusion import MaskingProcess
    owt_teacher = {"data_meta": {"kind": "gpt2", "gpt2_ids": None}, "model_config": {"seq_len": 1024,
                                                                                      "vocab_size": 50257}}
    process = MaskingProcess(50257)

    def from_teacher(cfg, teacher):
        return config.from_teacher(cfg, teacher, process, main=True)
    cfg = from_teacher(config.TrainConfig(distill="sdtt"), owt_teacher)
    assert (cfg.data, cfg.judge, cfg.seq_len, cfg.vocab_size) == ("openwebtext", "gpt2-large", 1024, 50257)
    told = config.TrainConfig(distill="sdtt", seq_len=1024, data="corpus.txt", judge="out/ar/ckpt.pt")
    assert from_teacher(told, owt_teacher) == dataclasses.replace(told, process="absorbing", vocab_size=50257)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "--data openwebtext, --judge gpt2-large" in lines[0]
    assert "--data" not in lines[1]
    synthetic = data.load_data("synthetic")
    compact = config.TrainConfig(distill="sdtt", seq_len=1024)
    small = {"data_meta": synthetic.meta(), "model_config": {"seq_len": 1024, "vocab_size": synthetic.vocab_size}}
    assert from_teacher(compact, small) == dataclasses.replace(compact, process="absorbing",
                                                               vocab_size=synthetic.vocab_size)
    assert capsys.readouterr().out == ""


def test_a_judge_for_another_vocabulary_is_refused_before_the_first_training_step(tmp_path):
    synthetic_teacher(tmp_path / "teacher.pt")
    meta = {**data.load_data("synthetic", seq_len=SEQ_LEN).meta(), "vocab_size": 5}
    judge = helpers.save_tiny_checkpoint(tmp_path / "stale_ar.pt", "ar", meta)
    result = run_script("train.py", "--distill", "sdtt", "--data", "synthetic", "--size", "micro", "--seq-len",
                        str(SEQ_LEN), "--batch-size", "4", "--iters", "2", "--teacher", str(tmp_path / "teacher.pt"),
                        "--judge", str(judge), "--out-dir", str(tmp_path / "sdtt"))
    assert "different tokenizer/vocabulary" in assert_one_error_line(result)
    assert not (tmp_path / "sdtt" / "ckpt.pt").exists()
