"""loading/checkpoint.py: atomic saves, safe loads, the one record layout (it rebuilds the model and its
process, and resumes training exactly), and MDLM's published state dicts."""
import argparse
import dataclasses
import os

import pytest
import torch

from config import TrainConfig
from corpora.markov import MarkovSource
from diffusion import Cosine, MaskingProcess
from helpers import SYNTHETIC, save_tiny_checkpoint, tiny_model
from loading import checkpoint
from training.run import Run, distilled_for
from train import training_step as pretraining_step
from training.step import Env, make_ema, trained


def test_save_is_atomic_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    checkpoint.save({"step": 1}, path)

    def crash(obj, f):
        with open(f, "wb") as out:
            out.write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save({"step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.read(path) == {"step": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]  # the failed write's temporary file is removed
    checkpoint.save({"step": 3}, path)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"] and checkpoint.read(path) == {"step": 3}


def test_read_refuses_a_missing_or_damaged_file_and_pickled_code(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        checkpoint.read(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        checkpoint.read(tmp_path / "junk.pt")
    torch.save({"object": argparse.Namespace(a=1)}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match="truncated or corrupt"):  # weights_only refuses arbitrary objects
        checkpoint.read(tmp_path / "pickle.pt")


def test_record_rebuilds_the_model_and_its_process_and_a_resumed_run_takes_the_same_next_step(tmp_path):
    model = tiny_model()
    cfg = TrainConfig(lr=1e-3, warmup=2, batch_size=2, grad_clip=1.0, out_dir=str(tmp_path), resume=True)
    env = Env(torch.device("cpu"))
    process = MaskingProcess(model.config.vocab_size, Cosine(0.01))
    net, ema = trained(model, cfg.lr, cfg, env), make_ema(model, 0.5)
    x = torch.randint(0, model.config.vocab_size, (2, model.config.seq_len))
    batch = [(x, torch.tensor([0.3, 0.8]), torch.rand(x.shape))]  # one micro-batch
    pretraining_step(net, ema, batch, process, cfg, env)
    point = checkpoint.record(kind="mdlm", model_config=dataclasses.asdict(model.config), process=process,
                              data_meta=SYNTHETIC, train_config={}, model=model.state_dict(), ema=ema, optimized=[net],
                              step=1, finished=False, round=3)
    checkpoint.save(point, tmp_path / "ckpt.pt")

    loaded, ckpt = checkpoint.load_model(tmp_path / "ckpt.pt", weights="raw")
    assert ckpt["round"] == 3 and ckpt["step"] == 1 and not ckpt["finished"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    rebuilt = checkpoint.process_of(ckpt)
    assert rebuilt.config() == process.config() and rebuilt.schedule == Cosine(0.01)

    # a copy resumed from the record (as every loop resumes: Run.start) takes the same next step as the original
    copy = tiny_model()
    copy_net, copy_ema = trained(copy, cfg.lr, cfg, env), make_ema(copy, 0.5)
    run = Run(cfg, env, MarkovSource(), process, "mdlm", {})
    assert run.start([copy_net], copy_ema, model=copy) == (3, 1)
    torch.manual_seed(0)
    pretraining_step(net, ema, batch, process, cfg, env)
    torch.manual_seed(0)
    pretraining_step(copy_net, copy_ema, batch, process, cfg, env)
    for a, b in zip(model.state_dict().values(), copy.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.module.state_dict().values(), copy_ema.module.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_from_before_processes_were_recorded_is_absorbing_and_log_linear(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "old.pt")
    ckpt = checkpoint.read(path)
    assert "process" not in ckpt
    assert checkpoint.process_of(ckpt).config() == {"kind": "absorbing", "schedule": "loglinear", "eps": 1e-3}
    assert checkpoint.process_of(checkpoint.read(save_tiny_checkpoint(tmp_path / "ar.pt", "ar"))) is None


def test_load_model_refuses_the_wrong_kind(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "ar.pt", "ar")
    with pytest.raises(ValueError, match="holds a ar model; expected mdlm or sedd or sdtt"):
        checkpoint.load_model(path, kinds=checkpoint.DIFFUSION_KINDS)


def test_a_bare_mdlm_state_dict_loads_as_an_mdlm_checkpoint(tmp_path):
    model = tiny_model()
    torch.save({"backbone." + k: v for k, v in model.state_dict().items()}, tmp_path / "mdlm.pt")
    loaded, ckpt = checkpoint.load_model(tmp_path / "mdlm.pt")
    assert ckpt["kind"] == "mdlm" and checkpoint.process_of(ckpt).name == "absorbing"
    tokens = torch.randint(0, model.config.vocab_size + 1, (2, model.config.seq_len))
    sigma = torch.zeros(2)
    assert torch.equal(loaded(tokens, sigma), model(tokens, sigma))


def test_a_student_records_what_it_was_distilled_for_and_a_teacher_nothing():
    student = {"kind": "sdtt", **distilled_for(8, 3, 16)}
    assert checkpoint.default_steps(student) == (8, "8 steps, as it was distilled for (sdtt round 3, its teacher sampled with 16)")
    assert checkpoint.default_steps({"kind": "idlm", "sampling_steps": 4}) == (
        4, "4 steps, as it was distilled for (idlm round 0)")  # a checkpoint from before the teacher's steps
    assert checkpoint.default_steps({"kind": "mdlm"}) is None


def test_every_distillation_method_writes_a_kind_that_every_door_loads():
    import config
    assert set(config.METHODS) <= set(checkpoint.DIFFUSION_KINDS)


def test_an_mmd_student_loads_where_any_absorbing_student_does(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "mmd.pt", "mmd")
    model, ckpt = checkpoint.load_model(path, kinds=checkpoint.DIFFUSION_KINDS)
    assert ckpt["kind"] == "mmd" and checkpoint.process_of(ckpt).has_mask
