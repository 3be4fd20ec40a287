"""What a Lightning checkpoint of MDLM's or Duo's training code says about itself: the diffusion
process it was trained under, read off its pickled Hydra config without running any code.

Token id 50257 is MASK for MDLM but [PAD], a state of the uniform noise, for Duo; the weights have
the same names and shapes either way, so only the config tells them apart. Read in s-sahoo/duo
(commit 7c9b498):

    trainer_base.py   TrainerBase.__init__ calls save_hyperparameters(), so `hyper_parameters`
                      holds {"config": the Hydra DictConfig, "tokenizer": ...}; on_save_checkpoint
                      adds `ema` = {decay, num_updates, shadow_params}, the shadow parameters of
                      backbone.parameters() then noise.parameters() (LogLinear has none).
    main.py, algo.py  config.algo.name picks the class: mdlm (AbsorbingState, SUBS); duo_base, duo
                      and distillation (DUO_BASE, DUO, Distillation: UniformState, time-conditioned
                      on sigma = -log alpha_t); ar, d3pm, sedd, ot-finetune are no MDLM or Duo teacher.
                      DUO_BASE drops the `teacher.*` keys (DCD's frozen copy) on save and on load.
    configs/          algo/duo.yaml: curriculum.gamma_min/-max (-3.5, -1.75); algo/distillation.yaml:
                      gamma_min/-max (-4, -1); noise/log-linear.yaml: type log-linear, eps 1e-3;
                      model/small.yaml: length 1024, dropout 0.1.
    models/dit.py     DIT: MDLM's parameter names (vocab_embed.embedding, sigma_map.mlp.{0,2},
                      rotary_emb.inv_freq, blocks.{i}.*, output_layer.*), under `backbone.`.

MDLM's own code (kuleshov-group/mdlm) has no `algo` group: its config says `parameterization: subs`
at the top. hub.InertUnpickler turns each OmegaConf object into a stand-in that keeps the state it
was pickled with; `plain` walks that state back into dicts (a container's `_content`, a leaf node's
`_val`: the layout of omegaconf 2.x, checked against omegaconf 2.4's pickles).
"""
UNIFORM_ALGOS = ("duo_base", "duo", "distillation")  # Duo's classes on trainer_base.UniformState
ABSORBING_ALGOS = ("mdlm",)
# MDLM-code's and Duo-code's LogLinear (eps 1e-3 unless noise.eps says) is ours; their cosine schedules are not
SCHEDULE_OF_NOISE = {"log-linear": "loglinear", "loglinear": "loglinear"}
MAX_DEPTH = 32


def plain(node, depth=0):
    """An unpickled OmegaConf tree (stand-ins with `pickled_state`) as plain dicts, lists and
    values; anything else (another library's object, a too deep tree) is None."""
    if depth > MAX_DEPTH:
        return None
    state = getattr(node, "pickled_state", node)
    if isinstance(state, dict) and ("_content" in state or "_val" in state):
        state = state["_content"] if "_content" in state else state["_val"]
    if isinstance(state, dict):
        return {k: plain(v, depth + 1) for k, v in state.items() if isinstance(k, str)}
    if isinstance(state, (list, tuple)):
        return [plain(v, depth + 1) for v in state]
    return state if state is None or isinstance(state, (str, bool, int, float)) else None


def hydra_config(ckpt):
    """The training config a Lightning checkpoint recorded, as a plain dict, or None. Lightning's
    dump_checkpoint writes `dict(module.hparams)` ({"config": ..., "tokenizer": ...} for these
    codes' save_hyperparameters()) or, were hparams one OmegaConf container, that container."""
    hyper = ckpt.get("hyper_parameters")
    config = plain(hyper.get("config") if isinstance(hyper, dict) else hyper)
    return config if isinstance(config, dict) else None


def lookup(config, dotted):
    """config["a"]["b"] for "a.b", or None where any level is missing."""
    for key in dotted.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def recorded_process(config, source):
    """"uniform" (Duo), "absorbing" (MDLM) or None (no readable config) from a training config;
    one clear error for the other algorithms of Duo's code."""
    name = lookup(config, "algo.name")
    if name in UNIFORM_ALGOS:
        return "uniform"
    if name in ABSORBING_ALGOS or (name is None and lookup(config, "parameterization") == "subs"):
        return "absorbing"
    if name is not None:
        raise ValueError(f"{source} is a checkpoint of Duo's code for algo {name!r}; only "
                         f"{', '.join(ABSORBING_ALGOS + UNIFORM_ALGOS)} are teachers here")
    return None


def settings(config, source):
    """What a training config says beyond the weights, for MDLM's code and Duo's alike: L
    (model.length), dropout, the noise schedule and its eps. Defaults (no readable config): the
    OpenWebText settings, L 1024, dropout 0.1, log-linear with eps 1e-3. A schedule that is not
    ours is refused in one line that names the field and its value."""
    noise = lookup(config, "noise.type") or "log-linear"
    if noise not in SCHEDULE_OF_NOISE:
        raise ValueError(f"{source}: its config's noise.type: the {noise!r} noise schedule is not one of ours "
                         "(only log-linear; the cosine of MDLM's and Duo's code is another schedule)")
    return {"seq_len": int(number(lookup(config, "model.length"), 1024)),
            "dropout": number(lookup(config, "model.dropout"), 0.1),
            "schedule": SCHEDULE_OF_NOISE[noise], "eps": number(lookup(config, "noise.eps"), 1e-3)}


def mdlm_settings(config, source):
    """`settings` of an MDLM teacher, and its time conditioning (time_conditioning at the top of
    MDLM's config, under algo in Duo's). Only the SUBS parameterization is an MDLM teacher here:
    MDLM's code also trains `sedd` and `d3pm` networks, refused in one line."""
    parameterization = lookup(config, "algo.parameterization") or lookup(config, "parameterization") or "subs"
    if parameterization != "subs":
        raise ValueError(f"{source}: its config's parameterization is {parameterization!r}; only MDLM's 'subs' "
                         "is loaded as an absorbing teacher")
    conditioned = lookup(config, "algo.time_conditioning")
    conditioned = lookup(config, "time_conditioning") if conditioned is None else conditioned
    return {**settings(config, source), "time_conditioning": bool(conditioned)}


def duo_settings(config, source):
    """`settings` of a Duo teacher, and the gamma window of its curriculum (duo) or of its
    distillation (distillation; None for duo_base)."""
    window = [number(lookup(config, f"algo.curriculum.gamma_{end}"), None) for end in ("min", "max")]
    if None in window:
        window = [number(lookup(config, f"algo.gamma_{end}"), None) for end in ("min", "max")]
    return {**settings(config, source), "gamma_window": None if None in window else window}


def number(value, default):
    """A config number (YAML may leave 1e-3 a string), or the default where there is none."""
    try:
        return default if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return default
