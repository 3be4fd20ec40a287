"""Sample text from a checkpoint: a masked diffusion model (mdlm, sdtt, idlm) or the AR baseline.

    python sample.py --ckpt out/sdtt/ckpt.pt --steps 16 --prompt "ROMEO:"

Diffusion: a sampler of samplers.py from all-MASK (the prompt, if any, is placed at the start
and never changes). The default, "cached", is exact ancestral sampling (SPEC section 1) with
the output layer only where tokens are revealed and the network run only on sequences that
changed; "ancestral" is the same draws the plain way; "topk" is LLaDA-style confidence
decoding (not ancestral); "semi-ar" makes samples longer than the context (--seq-len).
AR: the prompt is continued token by token with the KV cache.
"""
import json
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

import cli
import devices
from checkpoint import DIFFUSION_KINDS, load_model, process_of
from cli import flag
from data import tokenizer_from_meta
from evaluate import generate
from model import compile_blocks
from samplers import DEFAULT_SAMPLER, SAMPLERS, make_sampler


@dataclass
class SampleConfig:
    ckpt: Optional[str] = flag(None, "checkpoint to sample from (mdlm, sdtt, idlm or ar), or MDLM's weights "
                                          "(Hugging Face folder or hub name, .ckpt, state dict)")
    steps: int = flag(64, "diffusion sampling steps (ignored for AR)", at_least=1)
    num_samples: int = flag(4, "number of samples", at_least=1)
    batch_size: int = flag(16, "samples generated together", at_least=1)
    seq_len: Optional[int] = flag(None, "tokens per sample, prompt included (default: the context; longer: --sampler semi-ar)", at_least=1)
    seed: int = flag(1337, "random seed: the same seed gives the same samples")
    prompt: str = flag("", "text the samples start with (kept fixed)")
    final: str = flag("argmax", "how the last step fills positions still MASK (MDLM's noise removal is argmax)",
                      choices=["argmax", "sample"])
    sampler: str = flag(DEFAULT_SAMPLER, "diffusion sampler (see samplers.py)", choices=list(SAMPLERS))
    compile: bool = flag(False, "torch.compile the network's blocks (compiles on the first step)")
    weights: str = flag("ema", "weights to load", choices=["ema", "raw"])
    jsonl: Optional[str] = flag(None, "also write one JSON object per sample to this file")
    top_p: float = flag(1.0, "AR only: nucleus sampling threshold, in (0, 1]", above=0)
    temperature: float = flag(1.0, "AR only: softmax temperature", above=0)
    device: str = flag("auto", "where to sample", choices=devices.DEVICES)


def main():
    cfg = cli.parse_config(SampleConfig, "Sample text from a checkpoint.")
    if cfg.ckpt is None:
        raise ValueError("give the checkpoint to sample from: --ckpt PATH")
    if cfg.top_p > 1:
        raise ValueError(f"--top-p must be in (0, 1], got {cfg.top_p}")
    device = devices.pick(cfg.device)
    model, ckpt = load_model(cfg.ckpt, DIFFUSION_KINDS + ("ar",), cfg.weights, device)
    process = process_of(ckpt)
    tokenizer = tokenizer_from_meta(ckpt["data_meta"])
    prompt = tokenizer.encode(cfg.prompt)
    seq_len = cfg.seq_len or model.config.seq_len
    generator = torch.Generator().manual_seed(cfg.seed)  # on the CPU: the same draws on any device
    batches = -(-cfg.num_samples // cfg.batch_size)
    if cfg.compile:
        compile_blocks(model)
    many_steps = process is not None and cfg.steps >= 64
    with tqdm(total=cfg.steps * batches, disable=None if many_steps else True, leave=False) as progress, \
            devices.autocast(device):  # bf16 on a GPU
        tokens, _ = generate(model, process, cfg.num_samples, seq_len, cfg.steps, prompt=prompt,
                             sampler=make_sampler(cfg.sampler, cfg.final), bos_id=tokenizer.eos_id,
                             batch_size=cfg.batch_size, generator=generator, top_p=cfg.top_p,
                             temperature=cfg.temperature, on_step=lambda i, z: progress.update(1))
    texts = [tokenizer.decode(row) for row in tokens]
    for text in texts:
        print(text)
        print("---------------")
    if cfg.jsonl:
        steps = seq_len - len(prompt) if process is None else cfg.steps
        with open(cfg.jsonl, "w") as f:
            for text, row in zip(texts, tokens):
                f.write(json.dumps({"text": text, "tokens": row.tolist(), "steps": steps}) + "\n")


if __name__ == "__main__":
    cli.run(main)
