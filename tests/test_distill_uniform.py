"""The uniform-state (Duo) family end to end through `python train.py`: pretraining with
--process uniform (and the --tau curriculum), DCD of a uniform teacher, IDLM of the DCD
student (IDLM-DCD), IDLM-code's Gaussian IDLM-Duo (--distill idlm --tau), and the one-line
refusals of methods that do not apply."""
import dataclasses
import json

import pytest
import torch

import config
import data
import helpers
import idlm
from helpers import assert_one_error_line, run_script
from loading import checkpoint
from processes import duo
from processes.uniform import UniformProcess

SEQ_LEN = 16
UNIFORM = {"kind": "uniform", "schedule": "loglinear", "eps": 1e-3, "states": None}
MICRO = ["--data", "synthetic", "--size", "micro", "--seq-len", str(SEQ_LEN), "--batch-size", "4",
         "--eval-every", "0", "--eval-batches", "1", "--judge", "exact", "--eval-samples", "4"]


def uniform_teacher(path, uniform=True):
    """A random micro DiT saved as a finished uniform-process (or MDLM) checkpoint of the synthetic source."""
    synthetic = data.load_data("synthetic", seq_len=SEQ_LEN)
    teacher = helpers.random_dit(0, synthetic.vocab_size, SEQ_LEN)
    state = teacher.state_dict()
    config = {**dataclasses.asdict(teacher.config), "time_conditioning": uniform}
    process = {"process": {**UNIFORM, "states": synthetic.vocab_size}} if uniform else {}
    checkpoint.save({"kind": "mdlm", "model_config": config, "model": state, "ema": state, **process,
                     "data_meta": synthetic.meta(), "finished": True}, path)


def train(*args):
    result = run_script("train.py", *MICRO, *args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_pretraining_with_the_uniform_process_records_it_and_the_curriculum_runs(tmp_path):
    train("--process", "uniform", "--iters", "2", "--out-dir", str(tmp_path / "u"))
    ckpt = checkpoint.read(tmp_path / "u" / "ckpt.pt")
    assert ckpt["process"]["kind"] == "uniform" and ckpt["model_config"]["time_conditioning"]
    assert type(checkpoint.process_of(ckpt)).__name__ == "UniformProcess"
    train("--process", "uniform", "--tau", "0.01", "--iters", "2", "--out-dir", str(tmp_path / "duo"))
    ckpt = checkpoint.read(tmp_path / "duo" / "ckpt.pt")  # the curriculum's checkpoint records the process itself
    assert checkpoint.process_of(ckpt).config() == checkpoint.process_of(checkpoint.read(tmp_path / "u" / "ckpt.pt")).config()


def test_dcd_then_idlm_of_the_dcd_student_run_end_to_end(tmp_path):
    uniform_teacher(tmp_path / "teacher.pt")
    result = train("--distill", "dcd", "--iters", "2", "--rounds", "2", "--teacher", str(tmp_path / "teacher.pt"),
                   "--out-dir", str(tmp_path / "dcd"))
    assert "| DCD |" in result.stdout
    ckpt = checkpoint.read(tmp_path / "dcd" / "ckpt.pt")
    assert ckpt["kind"] == "dcd" and ckpt["finished"] and ckpt["process"]["kind"] == "uniform"
    result = train("--distill", "idlm", "--iters", "2", "--teacher", str(tmp_path / "dcd" / "ckpt.pt"),
                   "--out-dir", str(tmp_path / "idlm"))
    assert "| IDLM |" in result.stdout
    ckpt = checkpoint.read(tmp_path / "idlm" / "ckpt.pt")
    assert ckpt["process"]["kind"] == "uniform" and ckpt["idlm_latent"] == "exact relaxation"


def test_idlm_with_tau_trains_the_gaussian_variant_and_the_student_says_so(tmp_path):
    """--tau selects IDLM-code's Gaussian-argmax IDLM-Duo (inexact, SPEC.md §6.4); the checkpoint records it,
    and still records the plain uniform process (the student samples like any uniform model)."""
    uniform_teacher(tmp_path / "teacher.pt")
    result = train("--distill", "idlm", "--iters", "2", "--tau", "0.1", "--teacher", str(tmp_path / "teacher.pt"),
                   "--out-dir", str(tmp_path / "idlm"))
    assert "| IDLM |" in result.stdout
    ckpt = checkpoint.read(tmp_path / "idlm" / "ckpt.pt")
    assert ckpt["finished"] and ckpt["idlm_latent"].startswith("gaussian-argmax, tau = 0.1")
    assert ckpt["train_config"]["tau"] == 0.1 and ckpt["process"]["kind"] == "uniform"


def test_methods_that_do_not_apply_are_one_error_line(tmp_path):
    uniform_teacher(tmp_path / "teacher.pt")
    line = assert_one_error_line(run_script("train.py", *MICRO, "--distill", "sdtt", "--teacher",
                                            str(tmp_path / "teacher.pt"), "--out-dir", str(tmp_path / "s")))
    assert "absorbing" in line
    line = assert_one_error_line(run_script("train.py", *MICRO, "--distill", "dcd", "--tau", "0.1", "--teacher",
                                            str(tmp_path / "teacher.pt"), "--out-dir", str(tmp_path / "d")))
    assert "--tau" in line and "dcd" in line
    uniform_teacher(tmp_path / "mdlm.pt", uniform=False)
    line = assert_one_error_line(run_script("train.py", *MICRO, "--distill", "idlm", "--tau", "0.1", "--teacher",
                                            str(tmp_path / "mdlm.pt"), "--out-dir", str(tmp_path / "i")))
    assert "--tau" in line and "absorbing" in line
    line = assert_one_error_line(run_script("train.py", *MICRO, "--model", "ar", "--tau", "0.1",
                                            "--out-dir", str(tmp_path / "a")))
    assert "uniform" in line
    line = assert_one_error_line(run_script("train.py", *MICRO, "--model", "sedd", "--process", "uniform",
                                            "--out-dir", str(tmp_path / "b")))
    assert "absorbing graph" in line


def test_sample_py_picks_the_uniform_processs_own_sampler_when_none_is_given(tmp_path):
    uniform_teacher(tmp_path / "teacher.pt")
    result = run_script("sample.py", "--ckpt", str(tmp_path / "teacher.pt"), "--num-samples", "1", "--steps", "2",
                        "--jsonl", str(tmp_path / "s.jsonl"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"sampler": "ancestral"' in (tmp_path / "s.jsonl").read_text()


# ----------------------------------------------------------------------------- IDLM's choices (SPEC.md §6.5, §6.6)

def test_the_idlm_code_recipe_sets_every_choice_and_leaves_given_flags():
    cfg = config.resolve(config.TrainConfig(distill="idlm", process="uniform", seq_len=SEQ_LEN, recipe="idlm-code",
                                            lr=3e-5), "micro")
    assert (cfg.tau, cfg.noise_window, cfg.warmup, cfg.ema, cfg.grad_clip) == (1e-3, [0.9455, 0.0493], 2500, 0.9999, 0)
    assert (cfg.lr, cfg.fake_lr) == (3e-5, 3e-5)  # the given --lr wins, and the fake follows it
    assert (cfg.loss_per, cfg.fake_batch, cfg.fake_steps, cfg.idlm_gradient) == ("sequence", "fresh", 1, "no-score")
    latents, choices = idlm.latents_and_choices(cfg, UniformProcess(20))
    assert isinstance(latents, duo.Curriculum) and latents.tau == 1e-3 and choices.scale == SEQ_LEN
    assert [float(latents.schedule.alpha_and_slope(t)[0]) for t in (0.0, 1.0)] == pytest.approx(
        [0.9455, 0.0493], abs=2e-3)  # the window's ends keep their alphas at V = 20
    ours = config.resolve(config.TrainConfig(distill="idlm", process="uniform", seq_len=SEQ_LEN), "micro")
    assert (ours.tau, ours.idlm_gradient, ours.latent_draws, ours.grad_clip, ours.fake_batch) == (
        None, "exact", 8, 1.0, "same")
    windowed = config.resolve(config.TrainConfig(distill="idlm", process="uniform", noise_window=[0.05, 0.95]), "micro")
    _, choices = idlm.latents_and_choices(windowed, UniformProcess(20))
    assert choices.times == pytest.approx([0.05 / 0.999, 0.95 / 0.999])  # alpha = 1 - 0.999 t
    mdlm = config.resolve(config.TrainConfig(distill="idlm", process="absorbing"), "micro")
    assert (mdlm.idlm_gradient, mdlm.latent_draws) == ("no-score", 1)  # MDLM's and SEDD's paths as they were


def test_the_idlm_code_window_is_duos_gamma_window_at_gpt2s_vocabulary():
    ends = [float(duo.alpha_of_scales(*map(float, duo.gaussian_scales(g)), 50258)[0]) for g in (-3.55, -1.85)]
    assert [round(a, 4) for a in ends] == config.IDLM_CODE_WINDOW
    assert [duo.gamma_of_alpha(a, 50258) for a in ends] == pytest.approx([-3.55, -1.85], abs=1e-3)


def test_an_idlm_run_logs_what_shows_a_collapse_coming(tmp_path):
    uniform_teacher(tmp_path / "teacher.pt")
    train("--distill", "idlm", "--iters", "2", "--log-every", "1", "--eval-samples", "0", "--teacher",
          str(tmp_path / "teacher.pt"), "--out-dir", str(tmp_path / "idlm"))
    lines = [json.loads(line) for line in (tmp_path / "idlm" / "log.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "tokens_per_s" in line]
    assert len(logged) == 2
    for line in logged:
        assert 0 < line["student_sample_entropy"] and 0 < line["student_output_entropy"]
        assert line["fake_loss_on_data"] > 0 and line["teacher_loss_on_data"] > 0
        assert line["student"] == pytest.approx(line["teacher_loss"] - line["fake_loss_on_student"],
                                                              rel=1e-4, abs=1e-6)


def test_a_collapsing_student_prints_one_warning(capsys):
    synthetic = data.load_data("synthetic", seq_len=SEQ_LEN)
    cfg = config.resolve(config.TrainConfig(distill="idlm", process="uniform", seq_len=SEQ_LEN), "micro")
    process = UniformProcess(synthetic.vocab_size)
    latents, choices = idlm.latents_and_choices(cfg, process)
    student, teacher = helpers.random_dit(0, synthetic.vocab_size, SEQ_LEN), helpers.random_dit(1, synthetic.vocab_size, SEQ_LEN)
    x = synthetic.batch("train", 4, SEQ_LEN, torch.Generator().manual_seed(0))
    t, u = torch.full((4,), 0.5), torch.rand(x.shape)
    first = idlm.diagnostics(student, teacher, teacher, x, t, u, latents, choices)
    first_entropy = idlm.warn_if_collapsing(first, None)
    assert "warning" not in capsys.readouterr().out
    with torch.no_grad():  # the student now says one token everywhere
        student.output_layer.linear.bias[0] = 1e4
    collapsed = idlm.diagnostics(student, teacher, teacher, x, t, u, latents, choices)
    idlm.warn_if_collapsing(collapsed, first_entropy)
    assert collapsed["student_sample_entropy"] < 0.1 < first["student_sample_entropy"]
    assert "IDLM is collapsing" in capsys.readouterr().out


def test_an_idlm_run_with_fresh_fake_batches_resumes_to_the_same_weights(tmp_path):
    uniform_teacher(tmp_path / "teacher.pt")
    common = ["--distill", "idlm", "--eval-samples", "0", "--fake-batch", "fresh", "--fake-steps", "2", "--teacher",
              str(tmp_path / "teacher.pt")]
    train(*common, "--iters", "4", "--out-dir", str(tmp_path / "straight"))
    train(*common, "--iters", "2", "--out-dir", str(tmp_path / "split"))
    train(*common, "--iters", "4", "--out-dir", str(tmp_path / "split"), "--resume")
    straight, split = (checkpoint.read(tmp_path / run / "ckpt.pt") for run in ("straight", "split"))
    for key in ("model", "ema", "fake"):
        assert all(torch.equal(straight[key][k], split[key][k]) for k in straight[key]), key


def test_the_idlm_code_recipe_runs_end_to_end(tmp_path):
    uniform_teacher(tmp_path / "teacher.pt")
    result = train("--distill", "idlm", "--recipe", "idlm-code", "--iters", "2", "--teacher",
                   str(tmp_path / "teacher.pt"), "--out-dir", str(tmp_path / "idlm"))
    assert "| IDLM |" in result.stdout
    ckpt = checkpoint.read(tmp_path / "idlm" / "ckpt.pt")
    assert ckpt["train_config"]["recipe"] == "idlm-code" and ckpt["idlm_latent"].startswith("gaussian-argmax")
