"""Duo's published layouts (s-sahoo/duo, s-sahoo/duo-distilled; SPEC.md §9) on synthetic
state dicts: config.json with `architectures: [DUO]` and MDLM's `backbone.*` keys, and the
Lightning checkpoints of Duo's training code (loading/lightning.py). The loader records the uniform process
([PAD] is a noise state, not MASK) and time conditioning; a bare state dict is Duo's when told."""
import json

import pytest
import torch

import helpers
from loading import checkpoint
from model import DiT, ModelConfig, load_mdlm_state_dict
from processes.uniform import UniformProcess


def duo_folder(folder, model):
    """A folder in Duo's hub layout (fields of the exdysa/duo mirror's config.json)."""
    save_file = pytest.importorskip("safetensors.torch").save_file
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
    pytest.importorskip("safetensors")
    from loading.hub import save_folder
    folder = save_folder(helpers.random_dit(3, 9, 8), tmp_path / "mdlm")
    assert checkpoint.process_of(checkpoint.load(str(folder))).name == "absorbing"


# ----------------------------------------------------------------------------- Duo's Lightning checkpoints

# not a preset; V + 1 = 38 embedding rows, all of them states of the uniform noise
CFG = ModelConfig(vocab_size=37, seq_len=24, n_layer=2, n_head=4, n_embd=64, cond_dim=32, dropout=0.1,
                  time_conditioning=True)
DUO_CONFIG = {"algo": {"name": "duo", "time_conditioning": True, "parameterization": "mean",
                       "curriculum": {"gamma_min": -3.5, "gamma_max": -1.75}},
              "model": {"length": CFG.seq_len, "dropout": 0.1}, "noise": {"type": "log-linear", "eps": 1e-3}}


class Node:
    """Pickles as omegaconf 2.x's leaf nodes do: state {_metadata, _parent, _val}."""

    def __init__(self, value, parent):
        self._metadata, self._parent, self._val = None, parent, value


class Config:
    """Pickles as omegaconf 2.x's DictConfig does: state {_metadata, _parent, _content}, the
    content mapping keys to nodes and containers that point back to their parent."""

    def __init__(self, fields, parent=None):
        self._metadata, self._parent = None, parent
        self._content = {k: Config(v, self) if isinstance(v, dict) else Node(v, self) for k, v in fields.items()}


def shadow_of(state_dict, model):
    """EMA shadow parameters as Duo's ExponentialMovingAverage keeps them: the values of the
    backbone's parameters, in the backbone's order (its LogLinear noise has none)."""
    parameters = dict(model.named_parameters())
    return [parameters[k.removeprefix("backbone.")].detach().clone()
            for k in state_dict if k.removeprefix("backbone.") in parameters]


def duo_lightning(path, state_dict, ema_model=None, config=DUO_CONFIG):
    """A .ckpt in the layout of Duo's Lightning training (trainer_base.py, algo.py): the module's
    state dict (`backbone.*`), `ema` with shadow_params, `hyper_parameters` = {config, tokenizer}."""
    ema = None if ema_model is None else {"decay": 0.9999, "num_updates": 7, "shadow_params": shadow_of(state_dict, ema_model)}
    hyper = {"config": Config(config), "tokenizer": Node("gpt2", None)} if config is not None else None
    torch.save({"state_dict": state_dict, "ema": ema, "hyper_parameters": hyper, "global_step": 7,
                "loops": {"fit_loop": {}}}, path)
    return path


@pytest.fixture(scope="module")
def duo_weights():
    """Raw and EMA state dicts in Duo's layout, the networks they make and their inputs."""
    raw, ema = helpers.mdlm_state_dict(CFG, seed=5), helpers.mdlm_state_dict(CFG, seed=6)
    models = [load_mdlm_state_dict(DiT(CFG), sd).eval() for sd in (raw, ema)]
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randint(0, CFG.vocab_size + 1, (3, CFG.seq_len), generator=g), torch.rand(3, generator=g))
    return raw, ema, models, inputs


def logits(model, inputs):
    with torch.no_grad():
        return model(*inputs)


def test_a_duo_lightning_checkpoint_is_a_uniform_teacher_with_its_ema_weights(duo_weights, tmp_path):
    raw, _, (raw_model, ema_model), inputs = duo_weights
    path = duo_lightning(tmp_path / "duo.ckpt", {**raw, "teacher.vocab_embed.embedding": torch.zeros(3)}, ema_model)
    ckpt = checkpoint.load(path)
    assert ckpt["process"] == {"kind": "uniform", "schedule": "loglinear", "eps": 1e-3, "states": CFG.vocab_size + 1}
    assert ckpt["model_config"] == vars(CFG) and ckpt["duo"]["gamma_window"] == [-3.5, -1.75]
    process = checkpoint.process_of(ckpt)
    assert isinstance(process, UniformProcess) and process.mask_id is None
    assert torch.equal(logits(checkpoint.load_model(path)[0], inputs), logits(ema_model, inputs))
    assert torch.equal(logits(checkpoint.load_model(path, weights="raw")[0], inputs), logits(raw_model, inputs))


@pytest.mark.parametrize("algo, window", [("distillation", [-4.0, -1.0]), ("duo_base", None)])
def test_dcd_and_duo_base_checkpoints_are_uniform_too_with_their_own_gamma_window(duo_weights, tmp_path, algo, window):
    raw, _, (raw_model, _), inputs = duo_weights
    config = {**DUO_CONFIG, "algo": {"name": algo, "gamma_min": -4, "gamma_max": -1} if window else {"name": algo}}
    ckpt = checkpoint.load(duo_lightning(tmp_path / f"{algo}.ckpt", raw, config=config))
    assert ckpt["process"]["kind"] == "uniform" and ckpt["duo"]["gamma_window"] == window
    assert ckpt["ema"] is None


@pytest.mark.parametrize("config", [{**DUO_CONFIG, "algo": {"name": "mdlm"}}, {"parameterization": "subs"}, None],
                         ids=["duo-code-mdlm", "mdlm-code", "no-config"])
def test_mdlm_lightning_checkpoints_stay_absorbing_and_not_time_conditioned(duo_weights, tmp_path, config):
    ckpt = checkpoint.load(duo_lightning(tmp_path / "mdlm.ckpt", duo_weights[0], config=config))
    assert ckpt["process"] == {"kind": "absorbing", "schedule": "loglinear", "eps": 1e-3}
    assert checkpoint.process_of(ckpt).name == "absorbing"
    assert not ckpt["model_config"]["time_conditioning"] and "duo" not in ckpt


MDLM_CODE = {"parameterization": "subs", "time_conditioning": False, "noise": {"type": "loglinear"},
             "model": {"length": 1024, "dropout": 0.1}}  # kuleshov-group/mdlm's config.yaml, its fields we read
DUO_CODE_MDLM = {"algo": {"name": "mdlm", "parameterization": "subs", "time_conditioning": False},
                 "noise": {"type": "log-linear", "eps": 1e-3}, "model": {"length": 1024, "dropout": 0.1}}


def with_field(config, dotted, value):
    """A copy of a config with one field set, as a Hydra override would."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return config


def lightning_file(duo_weights, tmp_path, base, field, value):
    """A Lightning checkpoint of MDLM weights whose Hydra config (a real omegaconf DictConfig in the
    layout `base`) has `field` set to `value`."""
    omegaconf = pytest.importorskip("omegaconf")
    path = tmp_path / "mdlm.ckpt"
    torch.save({"state_dict": duo_weights[0], "hyper_parameters": {
        "config": omegaconf.OmegaConf.create(with_field(base, field, value))}}, path)
    return path


@pytest.mark.parametrize("base", [MDLM_CODE, DUO_CODE_MDLM], ids=["mdlm-code", "duo-code"])
@pytest.mark.parametrize("field, value, expected", [
    ("model.length", 128, {"seq_len": 128}),
    ("model.dropout", 0.0, {"dropout": 0.0}),
    ("time_conditioning", True, {"time_conditioning": True}),
    ("noise.eps", 0.01, {"eps": 0.01}),
])
def test_mdlm_lightning_checkpoints_honour_their_recorded_config(duo_weights, tmp_path, base, field, value, expected):
    """A real omegaconf DictConfig in each layout, one field changed: the loaded teacher follows it."""
    if base is DUO_CODE_MDLM and field == "time_conditioning":
        field = "algo.time_conditioning"
    ckpt = checkpoint.load(lightning_file(duo_weights, tmp_path, base, field, value))
    found = {**ckpt["model_config"], **ckpt["process"]}
    assert {k: found[k] for k in expected} == expected and ckpt["process"]["kind"] == "absorbing"
    assert checkpoint.process_of(ckpt).time_conditioned == ckpt["model_config"]["time_conditioning"]


@pytest.mark.parametrize("base", [MDLM_CODE, DUO_CODE_MDLM], ids=["mdlm-code", "duo-code"])
@pytest.mark.parametrize("field, value", [("parameterization", "sedd"), ("parameterization", "d3pm"),
                                          ("noise.type", "cosine"), ("noise.type", "geometric")])
def test_what_an_mdlm_lightning_config_says_we_cannot_load_is_one_line_naming_it(duo_weights, tmp_path, base, field,
                                                                                value):
    if base is DUO_CODE_MDLM and field == "parameterization":
        field = "algo.parameterization"
    path = lightning_file(duo_weights, tmp_path, base, field, value)
    with pytest.raises(ValueError, match=f"{field.split('.')[-1] if 'parameter' in field else field}.*'{value}'"):
        checkpoint.load(path)


def test_a_stated_process_decides_what_records_none(duo_weights, tmp_path):
    raw, _, (raw_model, _), inputs = duo_weights
    torch.save(raw, tmp_path / "bare.pt")
    duo_lightning(tmp_path / "unreadable.ckpt", raw, config=None)
    for name in ("bare.pt", "unreadable.ckpt"):
        model, ckpt = checkpoint.load_model(tmp_path / name, process="uniform")
        assert checkpoint.process_of(ckpt).name == "uniform" and ckpt["process"]["states"] == CFG.vocab_size + 1
        assert model.config.time_conditioning and torch.equal(logits(model, inputs), logits(raw_model, inputs))
        assert checkpoint.process_of(checkpoint.load(tmp_path / name)).name == "absorbing"  # MDLM's, as before
        assert checkpoint.process_of(checkpoint.load(tmp_path / name, process="absorbing")).name == "absorbing"


def assert_contradictions_refused(cases):
    for spec, stated, recorded in cases:
        with pytest.raises(ValueError, match=f"records the {recorded} process, not {stated}") as error:
            checkpoint.load(spec, process=stated)
        assert "\n" not in str(error.value)
        assert checkpoint.load(spec, process=recorded)["model"]  # the right word loads it


def test_a_stated_process_that_contradicts_the_recorded_one_is_one_error(duo_weights, tmp_path):
    duo = duo_lightning(tmp_path / "duo.ckpt", duo_weights[0])
    mdlm = duo_lightning(tmp_path / "mdlm.ckpt", duo_weights[0], config={"parameterization": "subs"})
    torch.save(checkpoint.load(duo), tmp_path / "ours.pt")  # our own checkpoint of it records the process too
    assert_contradictions_refused([(duo, "absorbing", "uniform"), (mdlm, "uniform", "absorbing"),
                                   (tmp_path / "ours.pt", "absorbing", "uniform")])


def test_hub_folders_contradicted_by_a_stated_process_are_one_error(tmp_path):
    pytest.importorskip("safetensors")
    from loading.hub import save_folder
    mdlm = save_folder(helpers.random_dit(3, 9, 8), tmp_path / "mdlm")
    duo = duo_folder(tmp_path / "duo", helpers.random_dit(3, 9, 8))
    assert_contradictions_refused([(mdlm, "uniform", "absorbing"), (duo, "absorbing", "uniform")])


def test_other_algorithms_and_schedules_of_duo_code_are_refused(duo_weights, tmp_path):
    for name in ("sedd", "ar", "d3pm"):
        path = duo_lightning(tmp_path / f"{name}.ckpt", duo_weights[0], config={"algo": {"name": name}})
        with pytest.raises(ValueError, match=f"algo '{name}'; only mdlm, duo_base, duo, distillation"):
            checkpoint.load(path)
    cosine = duo_lightning(tmp_path / "cos.ckpt", duo_weights[0], config={**DUO_CONFIG, "noise": {"type": "cosine"}})
    with pytest.raises(ValueError, match="'cosine' noise schedule is not one of ours"):
        checkpoint.load(cosine)


def test_a_real_omegaconf_config_is_read_without_running_pickled_code(duo_weights, tmp_path):
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create({**DUO_CONFIG, "data": {"cache": "${model.length}"}})
    path = tmp_path / "duo.ckpt"
    torch.save({"state_dict": duo_weights[0], "hyper_parameters": {"config": config}}, path)
    ckpt = checkpoint.load(path)
    assert ckpt["process"]["kind"] == "uniform" and ckpt["duo"] == {
        "seq_len": CFG.seq_len, "dropout": 0.1, "schedule": "loglinear", "eps": 1e-3, "gamma_window": [-3.5, -1.75]}


def test_at_the_command_line_a_contradiction_or_a_damaged_ckpt_is_one_line(duo_weights, tmp_path):
    duo = duo_lightning(tmp_path / "duo.ckpt", duo_weights[0])
    result = helpers.run_script("train.py", "--distill", "idlm", "--teacher", str(duo), "--process", "absorbing",
                                "--out-dir", str(tmp_path / "out"))
    assert "records the uniform process, not absorbing" in helpers.assert_one_error_line(result)
    (tmp_path / "damaged.ckpt").write_bytes(duo.read_bytes()[:500])
    result = helpers.run_script("train.py", "--distill", "idlm", "--teacher", str(tmp_path / "damaged.ckpt"),
                                "--out-dir", str(tmp_path / "out"))
    assert "is truncated or corrupt" in helpers.assert_one_error_line(result)


def test_distill_loads_a_bare_state_dict_as_duo_when_told_and_records_the_teachers_process(duo_weights, tmp_path):
    from loading import checkpoint
    torch.save(duo_weights[0], tmp_path / "bare.pt")
    teacher = str(tmp_path / "bare.pt")
    assert checkpoint.process_of(checkpoint.load_model(teacher, process="uniform")[1]).name == "uniform"
    assert checkpoint.process_of(checkpoint.load_model(teacher)[1]).name == "absorbing"
