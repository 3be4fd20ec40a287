"""Sample text from a checkpoint: a masked diffusion model (mdlm, sdtt, idlm) or the AR baseline.

    python sample.py --ckpt out/sdtt/ckpt.pt --steps 16 --prompt "ROMEO:"

Diffusion: ancestral sampling from all-MASK (the prompt, if any, is placed at the start and
never changes), then the remaining MASKs are filled by the model's prediction (SPEC section 1).
AR: the prompt is continued token by token with the KV cache.
"""
import json
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

import cli
from checkpoint import DIFFUSION_KINDS, load_model
from data import tokenizer_from_meta
from evaluate import generate


@dataclass
class SampleConfig:
    ckpt: str = field(default="", metadata={"help": "checkpoint to sample from (mdlm, sdtt, idlm or ar)"})
    steps: int = field(default=64, metadata={"help": "diffusion sampling steps (ignored for AR)"})
    num_samples: int = field(default=4, metadata={"help": "number of samples"})
    batch_size: int = field(default=16, metadata={"help": "samples generated together"})
    seq_len: int = field(default=0, metadata={"help": "tokens per sample, prompt included; 0: the context"})
    seed: int = field(default=1337, metadata={"help": "random seed: the same seed gives the same samples"})
    prompt: str = field(default="", metadata={"help": "text the samples start with (kept fixed)"})
    final: str = field(default="argmax", metadata={"help": "how the last step fills positions still MASK "
                       "(MDLM's noise removal is argmax)", "choices": ["argmax", "sample"]})
    cache: bool = field(default=True, metadata={"help": "prediction caching: reuse the network's output "
                        "after a step that changed nothing"})
    weights: str = field(default="ema", metadata={"help": "weights to load", "choices": ["ema", "raw"]})
    jsonl: str = field(default="", metadata={"help": "also write one JSON object per sample to this file"})
    top_p: float = field(default=1.0, metadata={"help": "AR only: nucleus sampling threshold"})
    temperature: float = field(default=1.0, metadata={"help": "AR only: softmax temperature"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "cpu, cuda"})


def main():
    cfg = cli.parse_config(SampleConfig, "Sample text from a checkpoint.")
    if not cfg.ckpt:
        raise cli.UserError("give the checkpoint to sample from: --ckpt PATH")
    if cfg.steps < 1:
        raise cli.UserError(f"--steps must be at least 1, got {cfg.steps}")
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise cli.UserError("--num-samples and --batch-size must be at least 1")
    if not (0 < cfg.top_p <= 1 and cfg.temperature > 0):
        raise cli.UserError("--top-p must be in (0, 1] and --temperature positive")
    model, ckpt = load_model(cfg.ckpt, DIFFUSION_KINDS + ("ar",), cfg.weights, cfg.device)
    tokenizer = tokenizer_from_meta(ckpt["data_meta"])
    prompt = tokenizer.encode(cfg.prompt)
    seq_len = cfg.seq_len or model.config.seq_len
    generator = torch.Generator().manual_seed(cfg.seed)  # on the CPU: the same draws on any device
    batches = -(-cfg.num_samples // cfg.batch_size)
    many_steps = ckpt["kind"] != "ar" and cfg.steps >= 64
    with tqdm(total=cfg.steps * batches, disable=None if many_steps else True, leave=False) as progress:
        tokens, _ = generate(model, ckpt["kind"], cfg.num_samples, seq_len, cfg.steps, prompt=prompt,
                             bos_id=tokenizer.eos_id, batch_size=cfg.batch_size, generator=generator,
                             final=cfg.final, cache=cfg.cache, top_p=cfg.top_p,
                             temperature=cfg.temperature, progress=progress)
    texts = [tokenizer.decode(row) for row in tokens]
    for text in texts:
        print(text)
        print("---------------")
    if cfg.jsonl:
        steps = seq_len - len(prompt) if ckpt["kind"] == "ar" else cfg.steps
        with open(cfg.jsonl, "w") as f:
            for text, row in zip(texts, tokens):
                f.write(json.dumps({"text": text, "tokens": row.tolist(), "steps": steps}) + "\n")


if __name__ == "__main__":
    cli.run(main)
