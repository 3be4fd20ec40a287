"""loading/hub.py: MDLM's weights from every layout they come in (Hugging Face folder, hub name, Lightning
.ckpt, bare state dict) load through the one loader as the same network, strictly."""
import json
from pathlib import Path

import pytest
import torch

from helpers import assert_one_error_line, mdlm_state_dict, run_script, write_hub_folder
from loading import checkpoint, hub
from model import DiT, ModelConfig, load_mdlm_state_dict

# not a preset: the width of one, the heads and cond_dim of none (a preset guess gets them wrong)
CFG = ModelConfig(vocab_size=37, seq_len=24, n_layer=2, n_head=4, n_embd=64, cond_dim=32, dropout=0.1)


@pytest.fixture(scope="module")
def weights():
    """A random state dict in MDLM's layout, the same network loaded in memory, and its logits."""
    state_dict = mdlm_state_dict(CFG, seed=3)
    reference = load_mdlm_state_dict(DiT(CFG), state_dict).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, CFG.vocab_size + 1, (3, CFG.seq_len), generator=g)
    sigma = torch.rand(3, generator=g)
    with torch.no_grad():
        logits = reference(tokens, sigma)
    return state_dict, (tokens, sigma), logits


def logits_of(spec, inputs, weights="ema"):
    model, ckpt = checkpoint.load_model(spec, kinds=checkpoint.DIFFUSION_KINDS, weights=weights)
    with torch.no_grad():
        return model(*inputs), ckpt


def lightning_checkpoint(path, state_dict, shadow_params):
    """A checkpoint as MDLM's Lightning training writes it: the module's state dict, the EMA's
    shadow parameters, and pickled objects of other libraries (here, one that would write a file)."""
    torch.save({"state_dict": state_dict, "ema": {"decay": 0.9999, "num_updates": 5, "shadow_params": shadow_params},
                "hyper_parameters": {"config": Tripwire(path.with_suffix(".pwned"))}, "global_step": 5}, path)
    return path


class Tripwire:
    """Unpickling runs Path.write_text: proof that a loader executed pickled code."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return Path.write_text, (self.target, "pickled code ran")


def test_a_hub_layout_folder_loads_the_same_network_with_safetensors_or_a_torch_pickle(weights, tmp_path):
    pytest.importorskip("safetensors")
    state_dict, inputs, expected = weights
    for name in hub.WEIGHT_FILES:
        folder = write_hub_folder(tmp_path / name, state_dict, CFG, weights=name)
        logits, ckpt = logits_of(folder, inputs)
        assert torch.equal(logits, expected)
        assert ckpt["kind"] == "mdlm" and ckpt["model_config"] == vars(CFG)


def test_a_hub_name_is_downloaded_through_huggingface_hub_then_loaded_as_its_folder(weights, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    pytest.importorskip("safetensors")
    state_dict, inputs, expected = weights
    folder, asked = write_hub_folder(tmp_path / "snapshot", state_dict, CFG), []

    def snapshot_download(repo_id, **kwargs):
        asked.append(repo_id)
        return str(folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    logits, _ = logits_of("kuleshov-group/mdlm-owt", inputs)
    assert asked == ["kuleshov-group/mdlm-owt"] and torch.equal(logits, expected)


def test_a_bare_state_dict_gets_its_architecture_from_its_shapes_not_from_a_preset(weights, tmp_path):
    state_dict, inputs, expected = weights
    torch.save(state_dict, tmp_path / "mdlm.pt")
    torch.save({k.removeprefix("backbone."): v for k, v in state_dict.items()}, tmp_path / "plain.pt")
    for name in ("mdlm.pt", "plain.pt"):
        logits, ckpt = logits_of(tmp_path / name, inputs)
        assert torch.equal(logits, expected)
        assert ckpt["model_config"] == {**vars(CFG), "seq_len": hub.MDLM_CONTEXT}


def test_a_bare_safetensors_file_loads_too(weights, tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    state_dict, inputs, expected = weights
    safetensors.save_file(state_dict, tmp_path / "mdlm.safetensors")
    assert torch.equal(logits_of(tmp_path / "mdlm.safetensors", inputs)[0], expected)


def test_a_lightning_checkpoint_gives_its_ema_weights_and_runs_none_of_its_pickled_code(weights, tmp_path):
    state_dict, inputs, expected = weights
    ema_state = mdlm_state_dict(CFG, seed=4)
    ema_model = load_mdlm_state_dict(DiT(CFG), ema_state).eval()
    parameters = dict(ema_model.named_parameters())
    shadow = [parameters[k.removeprefix("backbone.")].detach().clone()
              for k in state_dict if k.removeprefix("backbone.") in parameters]
    path = lightning_checkpoint(tmp_path / "last.ckpt", state_dict, shadow)
    assert torch.equal(logits_of(path, inputs, "raw")[0], expected)
    with torch.no_grad():
        assert torch.equal(logits_of(path, inputs, "ema")[0], ema_model(*inputs))
    assert not path.with_suffix(".pwned").exists()


def test_loading_is_strict_one_error_names_every_unknown_and_missing_key(weights, tmp_path):
    state_dict = dict(weights[0])
    del state_dict["backbone.blocks.1.attn_out.weight"], state_dict["backbone.output_layer.linear.bias"]
    state_dict["backbone.blocks.0.extra.weight"] = torch.zeros(2)
    torch.save(state_dict, tmp_path / "broken.pt")
    with pytest.raises(ValueError) as error:
        checkpoint.load_model(tmp_path / "broken.pt")
    message = str(error.value)
    assert "\n" not in message
    for key in ("blocks.1.attn_out.weight", "output_layer.linear.bias", "blocks.0.extra.weight"):
        assert key in message


def test_a_config_that_disagrees_with_the_weights_is_named_not_a_size_mismatch_traceback(weights, tmp_path):
    pytest.importorskip("safetensors")
    folder = write_hub_folder(tmp_path / "hub", weights[0], CFG)
    fields = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**fields, "cond_dim": 16}))
    with pytest.raises(ValueError, match=r"sigma_map.mlp.0.weight is \(32, 256\), expected \(16, 256\)"):
        checkpoint.load_model(folder)
    del fields["n_heads"]
    (folder / "config.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="config.json lacks n_heads"):
        checkpoint.load_model(folder)


def test_a_folder_without_weights_and_a_missing_file_are_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="needs config.json and model.safetensors or pytorch_model.bin"):
        checkpoint.load_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        checkpoint.load_model(tmp_path / "out" / "ckpt.pt")


def test_an_unreachable_hub_name_is_one_sentence_at_the_command_line():
    pytest.importorskip("huggingface_hub")
    result = run_script("sample.py", "--ckpt", "no-such-owner/no-such-model", "--device", "cpu",
                        env={"HF_HUB_OFFLINE": "1"})
    assert "could not download no-such-owner/no-such-model" in assert_one_error_line(result)


def test_the_full_gpt2_vocabulary_means_the_gpt2_tokenizer(tmp_path):
    cfg = ModelConfig(vocab_size=hub.GPT2_VOCAB, n_layer=1, n_head=2, n_embd=8, cond_dim=8)
    torch.save(mdlm_state_dict(cfg, 0), tmp_path / "owt.pt")
    assert checkpoint.load(tmp_path / "owt.pt")["data_meta"] == {"kind": "gpt2", "gpt2_ids": None}
    assert checkpoint.load(tmp_path / "owt.pt")["model_config"]["vocab_size"] == 50257


def test_save_folder_writes_what_load_reads_back(weights, tmp_path):
    pytest.importorskip("safetensors")
    state_dict, inputs, expected = weights
    hub.save_folder(load_mdlm_state_dict(DiT(CFG), state_dict), tmp_path / "export")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["vocab_size"] == CFG.vocab_size + 1
    assert torch.equal(logits_of(tmp_path / "export", inputs)[0], expected)
