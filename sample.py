"""Sample text from a checkpoint: a masked diffusion model (mdlm, sdtt, idlm) or the AR baseline.

    python sample.py --ckpt out/sdtt/round4.pt --prompt "ROMEO:"          # a student: its own steps
    python sample.py --ckpt out/mdlm/ckpt.pt --prompt "The [MASK:12] of Denmark" --show
    python sample.py --ckpt out/mdlm/ckpt.pt out/sdtt/round3.pt --trace trace.html

Diffusion: a sampler of samplers.py from all-MASK; the prompt's tokens are placed first and
never change, and its gap markers ([MASK:N], plumbing/prompts.py) are MASK positions to fill in. The
default, "cached", is exact ancestral sampling (SPEC.md §2.2) with the output layer only
where tokens are revealed and the network run only on sequences that changed; "ancestral" is
the same draws the plain way; "topk" is LLaDA-style confidence decoding (not ancestral);
"semi-ar" makes samples longer than the context (--seq-len). A student samples by default with
the steps it was distilled for (checkpoint.default_steps). --show animates the denoising in
the terminal (watching/show.py), --trace writes it as an HTML page (watching/page.py), both from a
trace of every step (watching/tracing.py). AR: the prompt is continued token by token with the KV cache.
"""
import json
import sys
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

from data import tokenizer_from_meta
from evaluate import generate
from loading.checkpoint import KINDS, default_steps, load_model, process_of
from plumbing import cli, devices, prompts
from plumbing.cli import flag
from samplers import DEFAULT_SAMPLER, SAMPLERS, make_sampler, sampler_name
from watching import page
from watching.show import Animation, visible
from watching.tracing import Traced

DEFAULT_STEPS = 64


@dataclass
class SampleConfig:
    ckpt: list[str] = flag([], "checkpoints to sample from (mdlm, sdtt, idlm or ar), or MDLM's weights (Hugging "
                               "Face folder or hub name, .ckpt, state dict); several: each with the same seed, "
                               "side by side in --trace")
    steps: Optional[list[int]] = flag(None, "diffusion sampling steps: one for every checkpoint, or one each "
                                            "(default: the steps a student was distilled for, else "
                                            f"{DEFAULT_STEPS}; ignored for AR)", at_least=1)
    num_samples: int = flag(4, "number of samples", at_least=1)
    batch_size: int = flag(16, "samples generated together", at_least=1)
    seq_len: Optional[int] = flag(None, "tokens per sample, prompt included (default: the context; longer: --sampler semi-ar)", at_least=1)
    seed: int = flag(1337, "random seed: the same seed gives the same samples")
    prompt: str = flag("", "text the samples start with (kept fixed); [MASK:N] in it is a gap of N tokens to "
                           "fill in, anywhere (diffusion only)")
    gap: int = flag(8, "masked tokens of a bare [MASK] in --prompt", at_least=1)
    final: str = flag("argmax", "how the last step fills positions still MASK (MDLM's noise removal is argmax)",
                      choices=["argmax", "sample"])
    sampler: Optional[str] = flag(None, f"diffusion sampler (see samplers.py; default: the model's own: {DEFAULT_SAMPLER} "
                                        "for MDLM, analytic for SEDD, ancestral for uniform-state)", choices=list(SAMPLERS))
    show: bool = flag(False, "animate the denoising in the terminal (the final text only when not a terminal)")
    show_seconds: float = flag(4.0, "--show: the shortest time the animation of one batch takes", at_least=0)
    trace: Optional[str] = flag(None, "write the denoising of every checkpoint as one HTML page with a slider")
    compile: bool = flag(False, "torch.compile the network's blocks (compiles on the first step)")
    weights: str = flag("ema", "weights to load", choices=["ema", "raw"])
    jsonl: Optional[str] = flag(None, "also write one JSON object per sample to this file")
    top_p: float = flag(1.0, "nucleus: draw only from the most probable tokens whose mass reaches this, in (0, 1] "
                             "(every sampler, diffusion and AR)", above=0, at_most=1)
    temperature: float = flag(1.0, "softmax temperature of every draw (every sampler, diffusion and AR)", above=0)
    device: str = flag("auto", "where to sample", choices=devices.DEVICES)


def check(cfg):
    if not cfg.ckpt:
        raise ValueError("give the checkpoint to sample from: --ckpt PATH")
    if cfg.steps is not None and len(cfg.steps) not in (1, len(cfg.ckpt)):
        raise ValueError(f"--steps takes one value, or one per checkpoint ({len(cfg.ckpt)}); got {len(cfg.steps)}")
    if cfg.trace:
        page.check_writable(cfg.trace)


def steps_for(cfg, index, path, ckpt):
    """--steps, else the steps a student was distilled for (said in one line), else the default."""
    if cfg.steps is not None:
        return cfg.steps[0] if len(cfg.steps) == 1 else cfg.steps[index]
    recorded = default_steps(ckpt)
    if recorded is None:
        return DEFAULT_STEPS
    print(f"{path}: {recorded[1]}; --steps changes it", file=sys.stderr)
    return recorded[0]


def sample(cfg, index, path, device, animate):
    """Samples of one checkpoint: (texts, tokens, steps, record fields, the Traced sampler or None)."""
    model, ckpt = load_model(path, KINDS, cfg.weights, device)
    process = process_of(ckpt)
    if process is None and (cfg.show or cfg.trace):
        raise ValueError(f"--show and --trace follow the denoising of a diffusion model; {path} is an AR model")
    tokenizer = tokenizer_from_meta(ckpt["data_meta"])
    seq_len = cfg.seq_len or model.config.seq_len
    prompt = prompts.template(cfg.prompt, tokenizer.encode, cfg.gap, seq_len)
    steps = seq_len - len(prompt) if process is None else steps_for(cfg, index, path, ckpt)
    sampler, traced = make_sampler(cfg.sampler, cfg.final, process), None
    if cfg.trace or animate:
        label = f"{path}: " if len(cfg.ckpt) > 1 else ""
        on_frame = Animation(tokenizer, process.mask_id, None if sampler.extends_context else steps,
                             cfg.show_seconds, label) if animate else None
        sampler = traced = Traced(sampler, on_frame)
    if cfg.compile:
        devices.compile_blocks(model)
    generator = torch.Generator().manual_seed(cfg.seed)  # on the CPU: the same draws on any device
    batches = -(-cfg.num_samples // cfg.batch_size)
    many_steps = process is not None and steps >= 64 and not animate
    with tqdm(total=steps * batches, disable=None if many_steps else True, leave=False) as progress, \
            devices.autocast(device):  # bf16 on a GPU
        tokens, _ = generate(model, process, cfg.num_samples, seq_len, steps, prompt=prompt, sampler=sampler,
                             bos_id=tokenizer.eos_id, batch_size=cfg.batch_size, generator=generator,
                             top_p=cfg.top_p, temperature=cfg.temperature, on_step=lambda i, z: progress.update(1))
    fields = {"checkpoint": path, "steps": steps, "seed": cfg.seed,
              "sampler": sampler_name(cfg.sampler, process) if process else "ar"}
    return [tokenizer.decode(row) for row in tokens], tokens, fields, traced, tokenizer


def main():
    cfg = cli.parse_config(SampleConfig, "Sample text from a checkpoint.")
    check(cfg)
    device = devices.pick(cfg.device)
    animate = cfg.show and sys.stdout.isatty()
    records, panels = [], []
    for index, path in enumerate(cfg.ckpt):
        texts, tokens, fields, traced, tokenizer = sample(cfg, index, path, device, animate)
        if len(cfg.ckpt) > 1 and not animate:
            print(f"== {path}, {fields['steps']} steps ==")
        for text in [] if animate else texts:  # an animation ends on the final text
            print(visible(text) if cfg.show else text)
            print("---------------")
        records += [{**fields, "text": text, "tokens": row.tolist()} for text, row in zip(texts, tokens)]
        if cfg.trace:
            panels.append(page.panel(f"{path}, {fields['steps']} steps", traced.trace(), tokenizer))
    if cfg.trace:
        page.write(cfg.trace, f"Denoising, seed {cfg.seed}", panels)
        print(f"trace of the denoising written to {cfg.trace}", file=sys.stderr)
    if cfg.jsonl:
        with open(cfg.jsonl, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)


if __name__ == "__main__":
    cli.run_command(main)
