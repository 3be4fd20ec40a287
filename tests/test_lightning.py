"""loading/lightning.py: a pickled Hydra config, as hub.InertUnpickler leaves it (stand-ins keeping their
pickled state), read back as plain data; the process and settings it names."""
import pytest

from loading import lightning
from loading.hub import Inert


def pickled(state):
    """A stand-in as InertUnpickler builds one: the object's pickled state, nothing else."""
    node = Inert()
    node.__setstate__(state)
    return node


def tree(fields, parent=None):
    """A DictConfig-shaped tree: containers hold `_content`, leaves `_val`, each a `_parent` link."""
    node = pickled({"_metadata": pickled({"ref_type": "Any"}), "_parent": parent})
    node.pickled_state["_content"] = {k: tree(v, node) if isinstance(v, dict)
                                      else pickled({"_metadata": None, "_parent": node, "_val": v})
                                      for k, v in fields.items()}
    return node


def test_plain_reads_containers_and_leaves_and_drops_everything_else():
    fields = {"algo": {"name": "duo", "curriculum": {"gamma_min": -3.5}}, "xs": [1, 2], "none": None}
    config = tree(fields)
    config.pickled_state["_content"]["tokenizer"] = pickled(("not", "a", "config"))  # another library's object
    config.pickled_state["_content"]["opaque"] = Inert()
    assert lightning.hydra_config({"hyper_parameters": {"config": config}}) == {**fields, "tokenizer": ["not", "a", "config"],
                                                                               "opaque": None}
    assert lightning.hydra_config({"hyper_parameters": config})["algo"]["name"] == "duo"


def test_a_missing_or_foreign_config_reads_as_none_and_a_cycle_ends():
    assert lightning.hydra_config({}) is None
    assert lightning.hydra_config({"hyper_parameters": {"config": Inert()}}) is None
    loop = pickled({})
    loop.pickled_state["_content"] = {"self": loop}
    deep = lightning.plain(loop)
    for _ in range(lightning.MAX_DEPTH + 1):  # depths 0 .. MAX_DEPTH are read, the next one is not
        deep = deep["self"]
    assert deep is None


@pytest.mark.parametrize("config, kind", [({"algo": {"name": "duo"}}, "uniform"), ({"algo": {"name": "duo_base"}}, "uniform"),
                                          ({"algo": {"name": "distillation"}}, "uniform"), ({"algo": {"name": "mdlm"}}, "absorbing"),
                                          ({"parameterization": "subs"}, "absorbing"), ({}, None), (None, None)])
def test_the_recorded_process(config, kind):
    assert lightning.recorded_process(config, "x.ckpt") == kind


def test_duo_settings_fall_back_to_duo_owt_and_read_yaml_strings_as_numbers():
    assert lightning.duo_settings(None, "x") == {"seq_len": 1024, "dropout": 0.1, "schedule": "loglinear", "eps": 1e-3,
                                                 "gamma_window": None}
    given = {"model": {"length": "128", "dropout": "${x}"}, "noise": {"type": "log-linear", "eps": "1e-4"},
             "algo": {"curriculum": {"gamma_min": -3.55, "gamma_max": -1.85}}}
    assert lightning.duo_settings(given, "x") == {"seq_len": 128, "dropout": 0.1, "schedule": "loglinear", "eps": 1e-4,
                                                  "gamma_window": [-3.55, -1.85]}
