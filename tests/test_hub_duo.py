"""Duo's published layouts (s-sahoo/duo, s-sahoo/duo-distilled; SPEC-teachers A5.16) on synthetic
state dicts: config.json with `architectures: [DUO]` and MDLM's `backbone.*` keys. The loader
records the uniform process ([PAD] is a noise state, not MASK) and time conditioning."""
import json

import pytest
import torch

import checkpoint
import helpers
from uniform import UniformProcess

pytest.importorskip("safetensors")


def duo_folder(folder, model):
    """A folder in Duo's hub layout (fields of the exdysa/duo mirror's config.json)."""
    from safetensors.torch import save_file
    folder.mkdir()
    cfg = model.config
    fields = {"architectures": ["DUO"], "causal": False, "cond_dim": cfg.cond_dim, "hidden_dim": cfg.n_embd,
              "n_blocks": cfg.n_layer, "n_heads": cfg.n_head, "model_length": cfg.seq_len, "dropout": 0.1,
              "var_min": True, "vocab_size": cfg.vocab_size + 1}
    (folder / "config.json").write_text(json.dumps(fields))
    save_file({"backbone." + k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("name", ["duo", "duo-distilled"])
def test_duo_folder_loads_as_a_time_conditioned_uniform_teacher(tmp_path, name):
    model = helpers.random_dit(3, 9, 8)
    folder = duo_folder(tmp_path / name, model)
    ckpt = checkpoint.load(str(folder))
    assert ckpt["process"] == {"kind": "uniform", "schedule": "loglinear", "eps": 1e-3, "states": 10}
    process = checkpoint.process_of(ckpt)
    assert isinstance(process, UniformProcess) and process.vocab_size == 10  # the extra row is a state
    loaded, _ = checkpoint.load_model(str(folder))
    assert loaded.config.time_conditioning
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_mdlm_folder_still_loads_as_absorbing(tmp_path):
    from hub import save_folder
    folder = save_folder(helpers.random_dit(3, 9, 8), tmp_path / "mdlm")
    assert checkpoint.process_of(checkpoint.load(str(folder))).kind == "absorbing"
