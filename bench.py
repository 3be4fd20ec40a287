"""Latency and cost of sampling and training (SPEC.md §10; SDTT section 4.4 and appendix A).

    python bench.py                              # every section, sized for this device
    python bench.py --only latency,roofline      # SDTT's protocol and its GPU lower bound
    python bench.py --only roofline --gpu h100   # projections only: instant, even on a CPU
    python bench.py --quick                      # a smoke run of every section

SDTT's protocol: untrained models (latency does not depend on the weights), one warm-up step,
then timed runs; the AR baseline generates L tokens with its static KV cache from a 1-token
prompt, the diffusion model samples in k steps from all-MASK, with the plain ancestral sampler
(whole output every forward) and with the default one (samplers.py: output layer at revealed
rows, trunk cached per sequence): the same tokens, less work. Timings synchronise the GPU. On CUDA
the models run under bf16 autocast (flash-attn when installed, else SDPA's kernels); on a CPU
the same code runs in float32. Sections other than latency use the first of --sizes.
"""
import json
import multiprocessing
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from model import GPT, PRESETS, DiT, config_for
from plumbing import devices
from plumbing.cli import check_bounds, flag, parse_config, run_command
from plumbing.devices import autocast, peak_memory, sync
from plumbing.flops import GPUS, count_params, forward_flops, lower_bounds, matmul_peak_flops, sampling_flops
from processes.registry import PROCESSES
from samplers import Ancestral, CachedAncestral, expected_forwards, make_sampler
import config
import dcd
import idlm
import mmd
import sdtt
from train import training_step as pretraining_step
from diffusion import antithetic_times, step_size
from model import size_of
from processes import duo
from training.step import Env, frozen, make_ema, trainable_copy, trained

SECTIONS = ["latency", "overhead", "work", "compile", "kv", "roofline", "train"]
SDTT_SETTING = dict(sizes=["small", "medium", "large", "1.3B"], vocab_size=50257, seq_len=1024)
# Flags left unset (None) take the device's value. A CPU is ~1000x slower than an A100: fewer
# step counts and runs (3, so that one disturbed run cannot move the median), and the AR run
# without a cache at batch 1 (at batch 8 it takes minutes).
PROFILES = {
    "cuda": dict(sizes=["small", "medium", "large", "1.3B"], vocab_size=50257, seq_len=1024, batch_sizes=[8, 4],
                 steps=[16, 32, 64, 128, 256], runs=10, train_runs=10, cache_steps=1024, cache_seq_len=1024,
                 cache_batch_sizes=[1, 8], kv_batch_size=8),
    "cpu": dict(sizes=["mini"], vocab_size=4096, seq_len=256, batch_sizes=[8, 4], steps=[16, 32], runs=3,
                train_runs=3, cache_steps=1024, cache_seq_len=1024, cache_batch_sizes=[1, 8], kv_batch_size=1),
    "quick": dict(sizes=["tiny"], vocab_size=4096, seq_len=64, batch_sizes=[4], steps=[4, 8], runs=1,
                  train_runs=1, cache_steps=128, cache_seq_len=32, cache_batch_sizes=[1], kv_batch_size=1),
}


@dataclass
class BenchConfig:
    only: str = flag(",".join(SECTIONS), "comma-separated sections to run")
    sizes: Optional[list[str]] = flag(None, f"model sizes ({', '.join(PRESETS)}); "
                                            "default: mini on CPU, small medium large 1.3B on CUDA", choices=list(PRESETS))
    vocab_size: Optional[int] = flag(None, "vocabulary; default: GPT-2's 50257 on CUDA, 4096 on CPU", at_least=1)
    seq_len: Optional[int] = flag(None, "tokens per sequence; default: 1024 on CUDA (SDTT), 256 on CPU", at_least=1)
    batch_sizes: Optional[list[int]] = flag(None, "batch sizes; default 8 4 (SDTT figs. 19-20)", at_least=1)
    steps: Optional[list[int]] = flag(None, "diffusion step counts k; default 16 32 64 128 256 on CUDA, 16 32 on CPU",
                                      at_least=1)
    runs: Optional[int] = flag(None, "timed runs after the warm-up; default 10 on CUDA (SDTT), 3 on CPU", at_least=1)
    cache_steps: Optional[int] = flag(None, "work: sampling steps (a teacher samples at L); default 1024", at_least=1)
    cache_seq_len: Optional[int] = flag(None, "work: sequence length; default 1024", at_least=1)
    cache_batch_sizes: Optional[list[int]] = flag(None, "work: batch sizes; default 1 8", at_least=1)
    kv_batch_size: Optional[int] = flag(None, "batch of the AR run with vs without KV cache; default 8 on CUDA, "
                                              "1 on CPU", at_least=1)
    gpu: Optional[str] = flag(None, "GPU of the roofline; default: this GPU if known, else a100 (SDTT's)",
                              choices=list(GPUS))
    train_runs: Optional[int] = flag(None, "timed training steps per method after a warm-up step; default 10 on "
                                           "CUDA, 3 on CPU", at_least=1)
    quick: bool = flag(False, "tiny model, short sequences, one run: checks that everything works")
    device: str = flag("auto", "where to run", choices=devices.DEVICES)
    threads: Optional[int] = flag(None, "CPU threads; default: torch's, one per core. On a machine shared with "
                                        "other work, fewer avoid OpenMP threads stalling each other", at_least=1)
    process: str = flag("absorbing", "diffusion process of the latency and train sections (the overhead, work and "
                                    "compile sections measure the absorbing process's samplers)", choices=list(PROCESSES))
    json: str = flag("results/bench.json", "where to write every figure as JSON")
    seed: int = flag(0, "random seed")


def resolve(cfg, device):
    """Fill the flags left unset from the device's profile, then check them."""
    profile = PROFILES["quick" if cfg.quick else device.type]
    cfg = check_bounds(replace(cfg, **{k: v for k, v in profile.items() if getattr(cfg, k) is None}))
    if cfg.gpu is None:
        name = torch.cuda.get_device_name(device).lower() if device.type == "cuda" else ""
        cfg = replace(cfg, gpu=next((g for g in GPUS if g in name), "a100"))
    if set(cfg.only.split(",")) - set(SECTIONS):
        raise ValueError(f"--only {cfg.only}: sections are {', '.join(SECTIONS)}")
    return cfg


# ----------------------------------------------------------------------------- timing

def timed(fn, runs, device, warmup=None):
    """{median_s, min_s, runs} and the results of `runs` calls of fn, after one call of warmup
    (one-time costs: allocator, kernel selection). The GPU queue is drained around each call."""
    if warmup is not None:
        warmup()
    seconds, results = [], []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        results.append(fn())
        sync(device)
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "runs": runs}, results


def untrained(kind, size, vocab_size, seq_len, device, time_conditioning=False):
    """An untrained model in eval mode; the AR model's context holds the prompt plus L tokens."""
    cfg = config_for(size, vocab_size=vocab_size, seq_len=seq_len + (kind == "ar"), time_conditioning=time_conditioning)
    return (GPT if kind == "ar" else DiT)(cfg).to(device).eval()


def device_of(model):
    return next(model.parameters()).device


def ar_generate(gpt, batch, new_tokens, use_cache=True):
    prompt = torch.zeros(batch, 1, dtype=torch.long, device=device_of(gpt))
    with autocast(prompt.device):
        return gpt.generate(prompt, new_tokens, use_cache=use_cache)


SAMPLERS = ("plain", "default")  # the first release's sampler (Ancestral); the process's own (MDLM's: cached)


def diffusion_sample(dit, batch, seq_len, steps, sampler="default", process="absorbing"):
    """Sequence-forwards per sequence of sampling from the named process's prior with the named sampler."""
    process = PROCESSES[process](dit.config.vocab_size)
    z = process.prior(batch, seq_len, device_of(dit), torch.Generator().manual_seed(0))
    sample = Ancestral() if sampler == "plain" else make_sampler(process=process)
    with autocast(z.device):
        return sample(dit, process, z, steps, torch.Generator().manual_seed(0))[1] / batch


# ----------------------------------------------------------------------------- sampling

def time_size(cfg, device, size):
    """The latency rows of one model size, one per batch size (its models are freed on return)."""
    conditioned = PROCESSES[cfg.process](cfg.vocab_size).time_conditioned
    gpt, dit = (untrained(kind, size, cfg.vocab_size, cfg.seq_len, device, conditioned) for kind in ("ar", "mdlm"))
    rows = []
    for batch in cfg.batch_sizes:
        ar, _ = timed(lambda: ar_generate(gpt, batch, cfg.seq_len), cfg.runs, device,
                      warmup=lambda: ar_generate(gpt, batch, 8))
        row = {"size": size, "batch": batch, "ar_params": count_params(gpt), "params": count_params(dit), "ar": ar,
               "diffusion": {}, "bound": lower_bounds(dit, gpt, batch, cfg.seq_len, cfg.steps, cfg.gpu)}
        for k in cfg.steps:
            row["diffusion"][k] = {}
            for name in SAMPLERS:
                d, passes = timed(lambda: diffusion_sample(dit, batch, cfg.seq_len, k, name, cfg.process), cfg.runs,
                                  device, warmup=lambda: diffusion_sample(dit, batch, cfg.seq_len, 1, name, cfg.process))
                row["diffusion"][k][name] = {**d, "forward_passes": statistics.mean(passes)}
            plain, default = row["diffusion"][k]["plain"], row["diffusion"][k]["default"]
            plain_flops = sampling_flops(dit, cfg.seq_len, plain["forward_passes"])
            default_flops = sampling_flops(dit, cfg.seq_len, default["forward_passes"], cfg.seq_len)
            row["diffusion"][k].update(speedup=plain["median_s"] / default["median_s"],
                                       flop_ratio=plain_flops / default_flops)
        rows.append(row)
    return rows


def latency(cfg, device, results):
    """SDTT section 4.4: AR with a KV cache vs k-step diffusion, per size and batch, next to the
    roofline bound of the same run on --gpu (see `lower_bounds`)."""
    rows = [row for size in cfg.sizes for row in time_size(cfg, device, size)]
    lines = []
    for r in rows:
        ar, ar_bound = r["ar"]["median_s"], r["bound"]["ar_s"]
        methods = [("AR + KV cache", r["ar_params"], r["ar"], ar_bound)]
        methods += [(f"diffusion, {k} steps, {name}", r["params"], d, r["bound"]["diffusion_s"][k])
                    for k, by_name in r["diffusion"].items() for name, d in by_name.items() if name in SAMPLERS]
        for method, params, t, bound in methods:
            lines.append([r["size"], f"{params / 1e6:.1f}M", r["batch"], method, f"{t['median_s']:.3f}",
                          f"{t['min_s']:.3f}", f"{ar / t['median_s']:.2f}",
                          f"{r['batch'] * cfg.seq_len / t['median_s']:,.0f}",
                          f"{bound * 1e3:.2f}", f"{ar_bound / bound:.2f}", f"{t['median_s'] / bound:,.1f}"])
        for k, by_name in r["diffusion"].items():
            plain, default = by_name["plain"], by_name["default"]
            print(f"{r['size']}, batch {r['batch']}, {k} steps: the default sampler is {by_name['speedup']:.2f}x "
                  f"faster than the plain one ({plain['forward_passes']:g} vs {default['forward_passes']:g} "
                  f"sequence-forwards per sequence; FLOP counts predict {by_name['flop_ratio']:.2f}x)")
    gpu = cfg.gpu.upper()
    print_table(f"Latency of {cfg.seq_len} tokens on {device.type} ({cfg.runs} runs after a warm-up step), "
                f"and the lower bound on an {gpu}",
                ["size", "params", "batch", "method", "median s", "min s", "speed-up vs AR", "tokens/s",
                 f"{gpu} bound ms", "bound speed-up", "median / bound"], lines)
    return rows


def overhead(cfg, device, results):
    """The plain sampler's cost beyond its network, two ways: a k-step run over (its passes x one
    bare pass), a ratio of two noisy timings; and the k steps run with the network replaced by
    its precomputed output, which times the sampler's own work alone."""
    dit = untrained("mdlm", cfg.sizes[0], cfg.vocab_size, cfg.seq_len, device)
    batch, k = cfg.batch_sizes[0], cfg.steps[0]
    process = PROCESSES["absorbing"](dit.config.vocab_size)
    z, sigma = process.prior(batch, cfg.seq_len, device), torch.zeros(batch, device=device)
    with torch.no_grad(), autocast(device):
        logits = dit(z, sigma)  # warm-up, and the output that stands in for the network below
        forward, _ = timed(lambda: dit(z, sigma).shape, cfg.runs, device)  # .shape: keep no logits alive
    sampling = next((r["diffusion"][k]["plain"] for r in results.get("latency", [])
                     if r["size"] == cfg.sizes[0] and r["batch"] == batch), None)
    if sampling is None:
        sampling, passes = timed(lambda: diffusion_sample(dit, batch, cfg.seq_len, k, "plain"), cfg.runs, device,
                                 warmup=lambda: diffusion_sample(dit, batch, cfg.seq_len, 1, "plain"))
        sampling["forward_passes"] = statistics.mean(passes)
    plain = Ancestral(cache=False)
    sampler_only, _ = timed(lambda: plain(lambda tokens, noise: logits, process, z, k), cfg.runs, device,
                            warmup=lambda: plain(lambda tokens, noise: logits, process, z, 1))
    fwd = forward["median_s"]
    ratio = sampling["median_s"] / (sampling["forward_passes"] * fwd)
    per_step = sampler_only["median_s"] / k
    flop_per_s = forward_flops(dit, batch, cfg.seq_len) / fwd
    print(f"\nSampler overhead ({cfg.sizes[0]}, batch {batch}, L={cfg.seq_len}, {k} steps): bare forward pass "
          f"{fwd:.3f} s, sampling {sampling['median_s']:.3f} s for {sampling['forward_passes']:g} passes: "
          f"ratio {ratio:.2f} (target <= 1.05).\nThe sampler alone takes {per_step * 1e3:.1f} ms a step, "
          f"{per_step / fwd:.1%} of a bare pass. The bare pass runs at {flop_per_s / 1e9:.1f} GFLOP/s, "
          f"{flop_per_s / matmul_peak_flops(device):.0%} of this device's float32 matmul peak.")
    return {"forward": forward, "sampling": sampling, "steps": k, "ratio": ratio, "sampler_only": sampler_only,
            "sampler_only_fraction": per_step / fwd, "flop_per_s": flop_per_s}


class FreeTrunk:
    """A trunk and head that cost nothing: counting forwards needs no network."""

    def __init__(self, vocab_size, seq_len):
        self.config = config_for("micro", vocab_size=vocab_size, seq_len=seq_len)

    def trunk(self, z, sigma):
        return z.new_zeros(*z.shape, 1, dtype=torch.float32), z.new_zeros(z.shape[0], 1, dtype=torch.float32)

    def head(self, hidden, c):
        return hidden.new_zeros(hidden.shape[0], self.config.vocab_size + 1)


def work(cfg, device, results):
    """Forward work of a teacher sampling at L steps (the baseline of every table), counted in
    sequence-forwards per sequence: the batch cache (the first release: the whole batch runs when
    any sequence changed) vs the per-sequence cache, measured on one run each, and expected."""
    steps, L = cfg.cache_steps, cfg.cache_seq_len
    rows = []
    for batch in cfg.cache_batch_sizes:
        row = {"batch_size": batch, "steps": steps, "seq_len": L}
        for cache in ("batch", "sequence"):
            process = PROCESSES["absorbing"](cfg.vocab_size)
            forwards = CachedAncestral(cache=cache)(FreeTrunk(cfg.vocab_size, L), process, process.prior(batch, L, "cpu"),
                                             steps, torch.Generator().manual_seed(cfg.seed))[1]
            row[cache] = {"measured": forwards / batch, "expected": expected_forwards(steps, L, batch, cache)}
        row["fewer"] = row["batch"]["measured"] / row["sequence"]["measured"]
        rows.append(row)
    print_table(f"Sequence-forwards per sequence at {steps} steps, L={L} (one run each; expected from the schedule)",
                ["batch", "batch cache", "expected", "per-sequence cache", "expected", "fewer"],
                [[r["batch_size"], f"{r['batch']['measured']:.0f}", f"{r['batch']['expected']:.0f}",
                  f"{r['sequence']['measured']:.0f}", f"{r['sequence']['expected']:.0f}", f"{r['fewer']:.2f}x"]
                 for r in rows])
    print("Exact ancestral sampling needs a forward at every step that reveals a token of a sequence: at L steps "
          "that is about (1 - 1/e) of the steps, so the per-sequence cache saves at most ~1.6x over a batch "
          "cache that runs every step.")
    return rows


def compile_gain(cfg, device, results):
    """torch.compile of the blocks for sampling: compile time (first call minus a warm call) and
    the speed-up of the default sampler, per size, at the first batch size and step count."""
    batch, k, rows = cfg.batch_sizes[0], cfg.steps[0], []
    for size in cfg.sizes:
        dit = untrained("mdlm", size, cfg.vocab_size, cfg.seq_len, device)
        eager, _ = timed(lambda: diffusion_sample(dit, batch, cfg.seq_len, k), cfg.runs, device,
                         warmup=lambda: diffusion_sample(dit, batch, cfg.seq_len, 1))
        compiled = devices.compile_blocks(untrained("mdlm", size, cfg.vocab_size, cfg.seq_len, device))
        first, _ = timed(lambda: diffusion_sample(compiled, batch, cfg.seq_len, k), 1, device)
        warm, _ = timed(lambda: diffusion_sample(compiled, batch, cfg.seq_len, k), cfg.runs, device)
        rows.append({"size": size, "batch": batch, "steps": k, "eager": eager, "compiled": warm,
                     "compile_s": first["median_s"] - warm["median_s"], "gain": eager["median_s"] / warm["median_s"]})
    print_table(f"torch.compile for sampling ({device.type}, batch {batch}, L={cfg.seq_len}, {k} steps, default "
                "sampler; compile time = first call minus a warm one)",
                ["size", "eager s", "compiled s", "gain", "compile s", "default on (>= 1.15x)"],
                [[r["size"], f"{r['eager']['median_s']:.3f}", f"{r['compiled']['median_s']:.3f}", f"{r['gain']:.2f}x",
                  f"{r['compile_s']:.0f}", "yes" if r["gain"] >= 1.15 else "no"] for r in rows])
    return rows


def kv(cfg, device, results):
    """What the AR baseline gains from its KV cache: one position per token, not the whole prefix."""
    gpt, batch = untrained("ar", cfg.sizes[0], cfg.vocab_size, cfg.seq_len, device), cfg.kv_batch_size
    row = {"batch": batch}
    for name, use_cache in (("cached", True), ("uncached", False)):
        t, _ = timed(lambda: ar_generate(gpt, batch, cfg.seq_len, use_cache), 1, device,
                     warmup=lambda: ar_generate(gpt, batch, 8, use_cache))
        row[name + "_s"] = t["median_s"]
    row["speedup"] = row["uncached_s"] / row["cached_s"]
    print(f"\nStatic KV cache ({cfg.sizes[0]}, batch {batch}, {cfg.seq_len} tokens, one run): {row['cached_s']:.2f} s with, "
          f"{row['uncached_s']:.2f} s without: {row['speedup']:.1f}x faster (target >= 5x)")
    return row


# ----------------------------------------------------------------------------- roofline

def roofline(cfg, device, results):
    """The lower bounds alone, for --sizes and at SDTT's setting (L=1024, GPT-2 vocabulary):
    what the methods should give on a GPU, whatever this machine is."""
    settings = [(s, cfg.vocab_size, cfg.seq_len) for s in cfg.sizes]
    settings += [(s, SDTT_SETTING["vocab_size"], SDTT_SETTING["seq_len"]) for s in SDTT_SETTING["sizes"]]
    rows, lines = [], []
    for size, vocab_size, seq_len in dict.fromkeys(settings):
        with torch.device("meta"):  # shapes without memory: even 8B projects instantly on a laptop
            gpt, dit = (untrained(kind, size, vocab_size, seq_len, "meta") for kind in ("ar", "mdlm"))
        for batch in cfg.batch_sizes:
            bound = lower_bounds(dit, gpt, batch, seq_len, cfg.steps, cfg.gpu)
            rows.append({"size": size, "batch": batch, "seq_len": seq_len, "vocab_size": vocab_size, **bound})
            lines.append([size, seq_len, vocab_size, batch, f"{bound['ar_s'] * 1e3:.1f}"]
                         + [f"{s * 1e3:.1f} ({bound['ar_s'] / s:.1f}x)" for s in bound["diffusion_s"].values()])
    print_table(f"Roofline lower bound on an {cfg.gpu.upper()} in bf16, ms (speed-up over AR)",
                ["size", "L", "vocab", "batch", "AR + KV cache"] + [f"diffusion, {k} steps" for k in cfg.steps], lines)
    return rows


# ----------------------------------------------------------------------------- training cost

def method_step(method, model, process, env, x, **flags):
    """The step `method` ("mdlm": pretraining under `process`, or a distillation) trains `model` with
    in its loop, on the batch x with one draw of its noise, built as the loop builds it (round 0).
    Returns (the step, the number of optimizers); a method that does not apply is one ValueError."""
    cfg = config.resolve(config.TrainConfig(distill=None if method == "mdlm" else method, **flags), size_of(model.config))
    config.check_method(cfg.distill, process)
    chunks = [(x, antithetic_times(torch.rand(()).item(), x.shape[0]).to(x.device), torch.rand(x.shape, device=x.device))]
    student = trained(model if method == "mdlm" else trainable_copy(model), cfg.lr, cfg, env)
    ema = make_ema(student.module, cfg.ema)
    if method == "mdlm":
        return (lambda: pretraining_step(student, ema, chunks, process, cfg, env)), 1
    teacher = frozen(model)
    if method == "sdtt":
        delta = step_size(cfg.start_steps)
        return (lambda: sdtt.training_step(student, teacher, ema, chunks, delta, process, cfg, env)), 1
    if method == "dcd":
        schedule, dt = duo.GaussianSchedule(process.vocab_size, *duo.DCD_GAMMA_RANGE), duo.round_gap(0, cfg.start_steps)
        return (lambda: dcd.training_step(student, teacher, ema, chunks, dt, process, schedule, cfg, env)), 1
    if method == "mmd":
        choices = mmd.Choices(cfg.mmd_block, cfg.mmd_bandwidth or 1.0, cfg.mmd_candidates, cfg.mmd_draws)
        return (lambda: mmd.training_step(student, teacher, ema, chunks, process, choices, cfg, env)), 1
    fake, (latents, choices) = trained(trainable_copy(model), cfg.fake_lr, cfg, env), idlm.latents_and_choices(cfg, process)
    return (lambda: idlm.training_step(student, fake, teacher, ema, chunks, [chunks] * cfg.fake_steps, latents, choices,
                                       cfg, env)), 2


def training_step(method, size, vocab_size, seq_len, batch, device, process="absorbing"):
    """`method_step` of an untrained model of `size` under the named process on a random batch."""
    process = PROCESSES[process](vocab_size)
    model = untrained("mdlm", size, vocab_size, seq_len, device, process.time_conditioned).train()
    x = torch.randint(vocab_size, (batch, seq_len), device=device)
    return method_step(method, model, process, Env(device), x, seq_len=seq_len, batch_size=batch,
                       rounds=1)  # the first round


def train_step_cost(method, size, vocab_size, seq_len, batch, runs, device_name, threads=None, seed=0,
                    process="absorbing"):
    """Seconds per training step of `method`, and the peak memory that its models, optimizer
    states, gradients and activations add to what the process held before."""
    device = torch.device(device_name)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    training_step(method, "micro", 64, 16, 2, device, process)[0]()  # loads the kernels' code pages, not the method's
    before = peak_memory(device, reset=True)
    step, _ = training_step(method, size, vocab_size, seq_len, batch, device, process)
    seconds, _ = timed(step, runs, device, warmup=step)
    return {"method": method, **seconds, "peak_bytes": peak_memory(device) - before}


def train(cfg, device, results):
    """One pretraining step and one step of each distillation method that applies to --process (SDTT
    for a process with MASK, DCD for the uniform one, IDLM for both) at the same model and batch,
    each in a fresh process so that memory freed by one method cannot hide the next one's growth."""
    args = (cfg.sizes[0], cfg.vocab_size, cfg.seq_len, cfg.batch_sizes[0], cfg.train_runs, device.type,
            torch.get_num_threads(), cfg.seed, cfg.process)
    methods = ("mdlm", "sdtt", "idlm") if PROCESSES[cfg.process].has_mask else ("mdlm", "idlm", "dcd")
    rows = []
    for method in methods:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            rows.append(pool.apply(train_step_cost, (method, *args)))
    targets = {"mdlm": "", "sdtt": "<= 1.8", "idlm": "<= 3.5", "dcd": ""}
    memory = "CUDA allocator peak" if device.type == "cuda" else "peak resident set growth"
    print_table(f"Training step ({cfg.process} process, {cfg.sizes[0]}, batch {cfg.batch_sizes[0]}, L={cfg.seq_len}, "
                f"{cfg.train_runs} steps after a warm-up step; memory: {memory})",
                ["method", "median s", "min s", "time / MDLM", "target", "peak MiB"],
                [[r["method"].upper(), f"{r['median_s']:.3f}", f"{r['min_s']:.3f}",
                  f"{r['median_s'] / rows[0]['median_s']:.2f}", targets[r["method"]],
                  f"{r['peak_bytes'] / 2**20:.0f}"] for r in rows])
    return rows


# ----------------------------------------------------------------------------- main

def print_table(title, header, rows):
    print(f"\n{title}\n")
    for line in [header, ["---"] * len(header), *rows]:
        print("| " + " | ".join(str(v) for v in line) + " |")


def main(argv=None):
    cfg = parse_config(BenchConfig, __doc__.split("\n\n")[0], argv)
    device = devices.pick(cfg.device)
    cfg = resolve(cfg, device)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    print(f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads; sections {cfg.only}")
    sections = {"latency": latency, "overhead": overhead, "work": work, "compile": compile_gain, "kv": kv,
                "roofline": roofline, "train": train}
    results = {}  # the overhead section reuses the latency section's sampling time
    for name in SECTIONS:
        if name in cfg.only.split(","):
            start = time.perf_counter()
            results[name] = sections[name](cfg, device, results)
            print(f"({name}: {time.perf_counter() - start:.0f} s)")
    # --only reruns some sections: keep the file's other sections (each with the config it ran under)
    path = Path(cfg.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(path.read_text()) if path.exists() else {}
    if saved.get("device") != str(device) or "configs" not in saved:
        saved = {"results": {}, "configs": {}}
    saved["results"].update(results)
    saved["configs"].update({name: asdict(cfg) for name in results})
    path.write_text(json.dumps({"device": str(device), "torch": torch.__version__, **saved}, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    run_command(main)
