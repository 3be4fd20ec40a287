"""The uniform-state (Duo) family end to end through `python train.py`: pretraining with
--process uniform (and the --tau curriculum), DCD of a uniform teacher, IDLM of the DCD
student (IDLM-DCD), IDLM-code's Gaussian IDLM-Duo (--distill idlm --tau), and the one-line
refusals of methods that do not apply."""
import dataclasses

import data
import helpers
from helpers import assert_one_error_line, run_script
from loading import checkpoint

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
