"""Every flag of train.py (`TrainConfig`), and the defaults a flag left unset takes: two tables,
the papers' settings (PAPER: full-size models on a GPU) and the CPU's (CPU: the embedded default,
minutes on two cores), one row per method.

One convention for "not given": a flag whose default is None is filled by `resolve` from the
recipe, then the preset's row for the method; its help says what it becomes. `check_config` and
`check_method` check what the flags' own bounds cannot. `describe` is the block a run prints first.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import sdtt
from diffusion import SCHEDULES
from model import CPU_SIZES
from plumbing import devices
from plumbing.cli import flag
from processes.registry import FAMILIES

METHODS = ["sdtt", "idlm", "dcd", "mmd"]  # --distill: sdtt.py, idlm.py, dcd.py, mmd.py (train.DISTILL: their loops)


# IDLM's public code, read from its training scripts (SPEC.md §6.5). Its noise window is Duo's gamma in
# [-3.55, -1.85]; given here as the alphas of its ends at GPT-2's V = 50258 (tests/test_distill_uniform.py), so that
# at another vocabulary the window keeps its noise levels (processes.duo.gamma_of_alpha maps them back).
IDLM_CODE_WINDOW = [0.9455, 0.0493]
RECIPES = {"idlm-code": dict(tau=1e-3, noise_window=IDLM_CODE_WINDOW, lr=1e-6, warmup=2500, ema=0.9999,  # fake: --lr
                             grad_clip=0.0, weight_decay=0.0, loss_per="sequence", fake_steps=1, fake_batch="fresh",
                             teacher_weights="ema", idlm_gradient="no-score")}
# what the IDLM flags become when neither the command line nor a recipe gives them
IDLM_DEFAULTS = dict(fake_steps=1, fake_batch="same", loss_per="token")
IDLM_ONLY = ("recipe", "idlm_gradient", "latent_draws", "noise_window", "fake_steps", "fake_batch", "loss_per",
             "fake_lr")
MMD_ONLY = ("mmd_block", "mmd_bandwidth", "mmd_candidates", "mmd_draws", "mmd_same_position")


@dataclass
class TrainConfig:
    model: str = flag("mdlm", "what to pretrain: a masked diffusion LM (MDLM), a SEDD score model (absorbing, "
                              "time-conditioned) or an AR model", choices=["mdlm", "sedd", "ar"])
    distill: Optional[str] = flag(None, "distill a diffusion teacher instead of pretraining (sdtt.py, idlm.py, dcd.py)",
                                  choices=METHODS)
    process: Optional[str] = flag(None, "diffusion process: absorbing (MDLM; the default) or uniform (Duo); "
                                        "--model sedd is absorbing with SEDD's score parameterization. With "
                                        "--teacher: what a bare state dict is (default absorbing); a checkpoint "
                                        "that records the other process is refused",
                                  choices=list(FAMILIES))
    tau: Optional[float] = flag(None, "uniform process: train with Duo's curriculum, soft inputs softmax(w/tau) "
                                      "(Duo: 1e-3); with --distill idlm: IDLM-code's Gaussian-argmax variant "
                                      "(inexact; IDLM-code: 1e-3); default: the discrete UDLM loss", above=0)
    teacher: Optional[str] = flag(None, "teacher: our checkpoint, MDLM's or Duo's weights as a Hugging Face folder "
                                        "or hub name (kuleshov-group/mdlm-owt, s-sahoo/duo), a Lightning .ckpt or a "
                                        "state dict (Duo's: with --process uniform); "
                                        "default: the embedded teacher, trained first if missing")
    data: Optional[str] = flag(None, "shakespeare | synthetic | openwebtext | path(s) to text files, comma-separated "
                                     "(default: shakespeare; openwebtext for a teacher with GPT-2's full vocabulary)")
    size: str = flag("tiny", "model size preset: micro, tiny, mini (CPU) or small ... 8B (SDTT Table 2)")
    preset: Optional[str] = flag(None, "the defaults of unset flags: the papers' (paper) or the CPU's (cpu); "
                                       "default: cpu for the CPU sizes (micro, tiny, mini), paper for the others "
                                       "(a distillation: the teacher's size)", choices=["paper", "cpu"])
    schedule: str = flag("loglinear", "noise schedule of a pretrained diffusion model", choices=list(SCHEDULES))
    vocab_size: int = flag(4096, "vocabulary of a small corpus: GPT-2's BPE cut after its first N - 1 tokens, and "
                                 "EOS (lossless: no <unk>; 1.27x GPT-2's tokens on the plays at 4096)",
                           at_least=257)
    seq_len: Optional[int] = flag(None, "sequence length L (default: 128; a distillation: the teacher's L, "
                                        "or shorter when given)", at_least=2)
    batch_size: Optional[int] = flag(None, "global batch (all processes, all accumulation steps)", at_least=1)
    micro_batch_size: Optional[int] = flag(None, "per-process micro-batch (0 = the whole batch at once); default: "
                                                 "the largest that fits in the free memory", at_least=0)
    iters: Optional[int] = flag(None, "optimizer steps (per round for SDTT)", at_least=1)
    lr: Optional[float] = flag(None, "peak learning rate (the student's, for IDLM)", above=0)
    fake_lr: Optional[float] = flag(None, "IDLM: learning rate of the fake model (default: --lr)", above=0)
    warmup: Optional[int] = flag(None, "linear warm-up steps, then constant", at_least=0)
    weight_decay: float = flag(0.0, "AdamW weight decay", at_least=0)
    grad_clip: Optional[float] = flag(None, "clip the gradient norm to this (0 = off; default 1.0)", at_least=0)
    ema: Optional[float] = flag(None, "EMA decay of the weights used for evaluation and sampling, in [0, 1)", at_least=0)
    dropout: Optional[float] = flag(None, "dropout (MDLM: 0.1; the CPU presets: 0)", at_least=0)
    eval_every: int = flag(200, "validate every N steps (0 = only at the end)", at_least=0)
    eval_batches: int = flag(4, "validation batches", at_least=1)
    log_every: int = flag(10, "write tokens/s, MFU and peak memory to <out-dir>/log.jsonl every N steps", at_least=1)
    ckpt_every: int = flag(100, "write the checkpoint every N steps", at_least=1)
    out_dir: Optional[str] = flag(None, "output folder (default: out/<mdlm|sedd|ar|sdtt|idlm>)")
    resume: bool = flag(False, "continue the run in --out-dir from its checkpoint")
    seed: int = flag(0, "random seed; a step's batch and noise are a function of (seed, step)")
    device: str = flag("auto", "where to train", choices=devices.DEVICES)
    compile: bool = flag(False, "torch.compile the trained model")
    # SDTT (paper section 3.1 and appendix C)
    rounds: Optional[int] = flag(None, "SDTT rounds (default: down to L/32 steps on CPU presets, 7 for full size)",
                                 at_least=1)
    start_steps: Optional[int] = flag(None, "SDTT: sampling steps m of the round-0 teacher (default: L on CPU "
                                            "presets, 1024)", at_least=1)
    teacher_steps: int = flag(2, "SDTT: teacher steps distilled into one student step (2, 4, 8)", at_least=1)
    divergence: Optional[str] = flag(None, "SDTT divergence (default: reverse_kl, the paper's, for full size; "
                                           "mse on the CPU presets, see results/embedded.md)",
                                     choices=list(sdtt.DIVERGENCES))
    teacher_sampler: str = flag("ancestral", "SDTT: sampler that makes the targets", choices=list(sdtt.TEACHER_SAMPLERS))
    reset_optimizer: bool = flag(False, "SDTT ablation: a fresh optimizer each round")
    ema_teacher: bool = flag(False, "SDTT ablation: the EMA weights teach the next round (EMA decay 0.999)")
    # IDLM (SPEC.md §6.5: each choice, ours and IDLM's public code's)
    recipe: Optional[str] = flag(None, "IDLM: 'idlm-code' gives every IDLM flag left unset IDLM's public code's "
                                       "choice (Gaussian latents at tau 1e-3 in its noise window, lr 1e-6, 2500 "
                                       "warm-up steps, EMA 0.9999, no clipping, loss summed over positions, a "
                                       "fresh batch for the fake)", choices=list(RECIPES))
    idlm_gradient: Optional[str] = flag(None, "IDLM: 'exact' adds the score-function term of the discrete loss "
                                              "latent's law (unbiased); 'no-score' holds that law fixed (the "
                                              "paper's form for MDLM); default: exact for a uniform-state teacher "
                                              "with discrete latents, no-score otherwise",
                                        choices=["exact", "no-score"])
    latent_draws: Optional[int] = flag(None, "IDLM: loss latents z_t per student output (default: 8 with the "
                                             "exact gradient, each one's control variate the mean of the others; "
                                             "else 1)", at_least=1)
    noise_window: Optional[list[float]] = flag(None, "IDLM: draw the student's input noise and the loss's where "
                                                     "alpha_t lies between these two values (default: 1 0, all of "
                                                     "it; IDLM-code: 0.945 0.049, its gamma window [-3.55, -1.85])",
                                               at_least=0)
    fake_steps: Optional[int] = flag(None, "IDLM: fake-model steps per student step (default 1)", at_least=1)
    fake_batch: Optional[str] = flag(None, "IDLM: the fake steps' data: the student's batch ('same', the default) "
                                           "or a batch of their own ('fresh', IDLM-code)", choices=["same", "fresh"])
    loss_per: Optional[str] = flag(None, "IDLM: the losses per token (default) or summed over the positions of a "
                                         "sequence (IDLM-code)", choices=["token", "sequence"])
    teacher_weights: Optional[str] = flag(None, "distillation: the teacher checkpoint's weights that the teacher "
                                                "(and the student and fake it starts) take: ema (default) or raw",
                                          choices=["ema", "raw"])
    # MDLM-MMD (SPEC.md §11)
    mmd_block: Optional[int] = flag(None, "MMD: the block (zero-based) whose hidden states are the representation "
                                          "(the paper: 3 of 12; the CPU preset: 1 of 4)", at_least=0)
    mmd_bandwidth: Optional[float] = flag(None, "MMD: alpha of the kernel exp(-alpha ||a - b||^2) (the paper: 2e-5; "
                                                "the CPU preset: 1 / the median squared distance of the data's "
                                                "representations)", above=0)
    mmd_candidates: Optional[int] = flag(None, "MMD: G candidates per sequence, each one's baseline the mean reward "
                                               "of the others (the paper: 4)", at_least=2)
    mmd_draws: Optional[int] = flag(None, "MMD: B completions per candidate (the paper: 2)", at_least=2)
    mmd_same_position: Optional[str] = flag(None, "MMD: the within-completions term 'exclude's pairs at the same "
                                                  "position (the paper) or 'include's them",
                                            choices=["exclude", "include"])
    # the table printed at the end of a distillation
    judge: Optional[str] = flag(None, "GenPPL judge: our AR checkpoint (default out/ar/ckpt.pt, trained if "
                                      "missing; gpt2-large for a teacher with GPT-2's full vocabulary), 'exact' "
                                      "for synthetic data, or a Hugging Face model (folder or hub name)")
    eval_samples: int = flag(64, "samples per row of the final GenPPL/entropy table (0: no table)", at_least=0)
    table_temperatures: list[float] = flag([0.5, 0.7, 0.8, 0.9, 1.1, 1.3], "the final table also samples the "
                                           "teacher at L steps at these temperatures: the frontier every row is "
                                           "judged against at its own entropy", above=0)


# The defaults of unset flags, per method: the papers' settings (full-size models) ...
PAPER = {
    "mdlm": dict(batch_size=512, iters=1_000_000, lr=3e-4, warmup=2500, ema=0.9999, dropout=0.1),
    "sedd": dict(batch_size=512, iters=1_000_000, lr=3e-4, warmup=2500, ema=0.9999, dropout=0.1),  # as MDLM
    "ar": dict(batch_size=512, iters=1_000_000, lr=3e-4, warmup=2500, ema=0.9999, dropout=0.1),
    "sdtt": dict(batch_size=128, iters=10_000, lr=6e-5, warmup=500, ema=0.9999, rounds=7, start_steps=1024,
                 divergence="reverse_kl"),
    "idlm": dict(batch_size=512, iters=10_000, lr=1e-6, warmup=2500, ema=0.9999),
    "dcd": dict(batch_size=128, iters=10_000, lr=6e-5, warmup=500, ema=0.999, rounds=5, start_steps=512),
    # MDLM-MMD's recipe (its configs): AdamW without weight decay, constant after warm-up, no clipping
    "mmd": dict(batch_size=512, iters=4000, lr=1e-4, warmup=100, ema=0.9999, grad_clip=0.0, mmd_block=3,
                mmd_bandwidth=2e-5, mmd_candidates=4, mmd_draws=2, mmd_same_position="exclude"),
}
# ... and the CPU's, scaled down to minutes on two cores. SDTT, round count and first teacher steps: down
# from L to L/32 steps (`resolve`). Its divergence is the MSE of log-probs (B.3): the reverse KL's optimum
# over the 7-minute teacher's targets is *flatter* than the teacher, the MSE sharpens (the paper's Figure 6).
# DCD's T_d: L/2 (`resolve`).
CPU = {
    "mdlm": dict(batch_size=32, iters=800, lr=1e-3, warmup=50, ema=0.99, dropout=0.0),
    "sedd": dict(batch_size=32, iters=800, lr=1e-3, warmup=50, ema=0.99, dropout=0.0),
    "ar": dict(batch_size=32, iters=300, lr=1e-3, warmup=30, ema=0.99, dropout=0.0),
    "sdtt": dict(batch_size=32, iters=80, lr=3e-4, warmup=10, ema=0.9, divergence="mse"),
    "idlm": dict(batch_size=32, iters=250, lr=1e-4, warmup=20, ema=0.99),
    "dcd": dict(batch_size=32, iters=60, lr=3e-4, warmup=10, ema=0.9, rounds=3),
    # MMD on CPU: the paper's G, B and lr; the block a third of the way up; the median-heuristic bandwidth
    "mmd": dict(batch_size=32, iters=100, lr=1e-4, warmup=10, ema=0.99, grad_clip=0.0, mmd_block=1,
                mmd_candidates=4, mmd_draws=2, mmd_same_position="exclude"),
}
PRESETS = {"paper": PAPER, "cpu": CPU}
SEQ_LEN = 128  # L of the embedded default


def preset_of(cfg, size):
    """--preset, or the one of the model's size: cpu for micro, tiny and mini, paper for the others."""
    return cfg.preset or ("cpu" if size in CPU_SIZES else "paper")


def resolve(cfg, size=None):
    """Fill the flags left at None: from the --recipe, then the preset's row for the method (size:
    the model's size, for the preset; default --size), then IDLM's own defaults (`idlm_defaults`)."""
    method = cfg.distill or cfg.model
    given = [name for name in IDLM_ONLY if getattr(cfg, name) is not None]
    if method != "idlm" and given:
        raise ValueError(f"--{given[0].replace('_', '-')} applies to --distill idlm only")
    given = [name for name in MMD_ONLY if getattr(cfg, name) is not None]
    if method != "mmd" and given:
        raise ValueError(f"--{given[0].replace('_', '-')} applies to --distill mmd only")
    if cfg.teacher_weights is not None and not cfg.distill:
        raise ValueError("--teacher-weights applies to a distillation (--distill) only")
    cfg = dataclasses.replace(cfg, process=cfg.process or "absorbing", preset=preset_of(cfg, size or cfg.size))
    if cfg.recipe:
        if cfg.process != "uniform":
            raise ValueError(f"--recipe {cfg.recipe} is IDLM's public recipe for uniform-state (Duo) teachers; this "
                             f"teacher's process is {cfg.process}")
        cfg = dataclasses.replace(cfg, **{k: v for k, v in RECIPES[cfg.recipe].items() if getattr(cfg, k) is None})
    filled = {k: v for k, v in PRESETS[cfg.preset][method].items() if getattr(cfg, k) is None}
    if cfg.seq_len is None:
        cfg = dataclasses.replace(cfg, seq_len=SEQ_LEN)
    if cfg.data is None:
        filled["data"] = "shakespeare"
    if method == "sdtt" and cfg.ema_teacher and cfg.ema is None:
        filled["ema"] = 0.999
    if method == "sdtt" and cfg.preset == "cpu":
        start = filled.setdefault("start_steps", cfg.start_steps or cfg.seq_len)
        if cfg.rounds is None:  # down to L/32 steps, or to 1 step for L < 32
            down_to_one = int(math.log(start, cfg.teacher_steps) + 1e-9)
            filled["rounds"] = max(1, min(round(math.log(32, cfg.teacher_steps)), down_to_one))
    if method == "dcd" and cfg.start_steps is None:
        filled.setdefault("start_steps", max(1, cfg.seq_len // 2))
    cfg = dataclasses.replace(cfg, **filled)
    if method == "idlm" and cfg.fake_lr is None:
        cfg = dataclasses.replace(cfg, fake_lr=cfg.lr)
    cfg = dataclasses.replace(cfg, grad_clip=1.0 if cfg.grad_clip is None else cfg.grad_clip,
                              teacher_weights=cfg.teacher_weights or ("ema" if cfg.distill else None))
    if method == "idlm":
        cfg = idlm_defaults(cfg)
    if cfg.out_dir is None:
        name = "uniform" if method == "mdlm" and cfg.process == "uniform" else method
        cfg = dataclasses.replace(cfg, out_dir=f"out/{name}")
    return cfg


def idlm_defaults(cfg):
    """IDLM's flags left unset: the exact gradient (with 8 latent draws) where the loss latent is
    discrete and uniform-state, no score term elsewhere (MDLM's and SEDD's form, and Gaussian latents,
    whose gradient flows through w_t); the whole noise range; one fake step on the student's batch."""
    uniform_discrete = cfg.process == "uniform" and not cfg.tau
    gradient = cfg.idlm_gradient or ("exact" if uniform_discrete else "no-score")
    if gradient == "exact" and cfg.tau:
        raise ValueError("--idlm-gradient exact adds the score term of discrete latents; with --tau the Gaussian "
                         "latents carry the gradient through w_t: drop one of the two")
    window = cfg.noise_window
    if window is not None and (len(window) != 2 or max(window) > 1 or window[0] == window[1]):
        raise ValueError(f"--noise-window takes two different alphas in [0, 1], got {' '.join(map(str, window))}")
    filled = {k: v for k, v in IDLM_DEFAULTS.items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **filled, idlm_gradient=gradient,
                               latent_draws=cfg.latent_draws or (8 if gradient == "exact" else 1))


def check_config(cfg, world):
    """What the flags' own bounds cannot say: how the batch splits over processes and micro-batches."""
    if cfg.batch_size < world or cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} must be a multiple of the {world} processes")
    if cfg.micro_batch_size and (cfg.batch_size // world) % cfg.micro_batch_size:  # None: fit_micro_batch decides
        raise ValueError(f"--micro-batch-size {cfg.micro_batch_size} must divide the per-process batch "
                         f"{cfg.batch_size // world}")
    if cfg.ema >= 1:
        raise ValueError("--ema must lie in [0, 1)")
    if cfg.model == "sedd" and cfg.process == "uniform":
        raise ValueError("--model sedd is SEDD on the absorbing graph: drop --process uniform")


def check_method(method, process, tau=None):
    """One clear line where a method (or --tau) does not apply to the teacher's process: the one
    place these are checked. method None: pretraining; process None: the AR model."""
    if tau and (method not in (None, "idlm") or process is None or process.family != "uniform"):
        here = f"--distill {method}" if method else "pretraining"
        what = "an AR model" if process is None else f"the {process.name} process"
        raise ValueError(f"--tau (Duo's Gaussian soft inputs) applies to pretraining with --process uniform and to "
                         f"--distill idlm of a uniform-state teacher (here: {here}, {what})")
    if method == "sdtt" and not process.has_mask:
        raise ValueError("SDTT distills an absorbing teacher, with a MASK state (MDLM or SEDD); this teacher is "
                         f"{process.name}: use --distill idlm or dcd")
    if method == "mmd" and not process.has_mask:
        raise ValueError(f"MMD post-trains an absorbing model, with a MASK state (MDLM or SEDD, or an SDTT or IDLM "
                         f"student of one); this model's process is {process.name}")
    if method == "dcd" and process.family != "uniform":
        raise ValueError(f"DCD distills a uniform-state (Duo) teacher; this teacher's process is {process.name} "
                         "(use --distill sdtt or idlm)")


FULL_GPT2 = {"kind": "gpt2", "gpt2_ids": None}  # the data_meta of MDLM's OpenWebText models
PAPER_JUDGE = "gpt2-large"


def from_teacher(cfg, teacher_ckpt, process, main):
    """cfg with what the teacher fixes: its vocabulary, its process family and L (or the shorter L
    given). A teacher with GPT-2's full vocabulary is MDLM's OpenWebText setting: unless given,
    --data is openwebtext and --judge gpt2-large, said in one line."""
    L, meta = teacher_ckpt["model_config"]["seq_len"], teacher_ckpt["data_meta"]
    if (cfg.seq_len or 0) > L:
        raise ValueError(f"--seq-len {cfg.seq_len} is longer than the teacher's L = {L}")
    vocab = len(meta["gpt2_ids"]) + 1 if meta.get("gpt2_ids") else meta["merges"] + 1 if meta.get("merges") else None
    cfg = dataclasses.replace(cfg, seq_len=cfg.seq_len or L, process=process.family,
                              vocab_size=vocab or teacher_ckpt["model_config"]["vocab_size"])
    if meta != FULL_GPT2:
        return cfg
    filled = {name: value for name, value in (("data", "openwebtext"), ("judge", PAPER_JUDGE))
              if getattr(cfg, name) is None}
    if main:
        chosen = ", ".join(f"--{name} {value}" for name, value in filled.items())
        print(f"the teacher has GPT-2's full vocabulary (MDLM's OpenWebText setting): L = {cfg.seq_len}"
              + (f", {chosen} (give the flags to change them)" if chosen else ""))
    return dataclasses.replace(cfg, **filled)


def describe(cfg, width=110):
    """The resolved configuration as one compact block: every flag that has a value, as --flag value."""
    words = [f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in dataclasses.asdict(cfg).items() if v is not None and v is not False]
    lines, line = [], "config:"
    for word in words:
        if len(line) + len(word) + 2 > width:
            lines.append(line)
            line = "       "
        line += "  " + word
    return "\n".join(lines + [line])
