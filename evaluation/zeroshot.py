"""Zero-shot likelihood of a checkpoint on a text corpus (MDLM Table 3's protocol), every
setting fixed by a flag and printed with the result, since unstated settings are what makes
published numbers hard to reproduce.

    python -m evaluation.zeroshot --ckpt out/mdlm/ckpt.pt --data my.txt,other.txt        # local files, offline
    python -m evaluation.zeroshot --ckpt mdlm.pt --data wikitext103 --mode wrap          # MDLM's datasets, online

Each document is tokenized with the checkpoint's tokenizer, framed as [BOS] doc [EOS] (each
optional; our tokenizers' BOS is their EOS token), then cut into blocks of L tokens:
- wrap: the framed documents are concatenated and cut (MDLM's OpenWebText/LM1B setting);
- pad: each framed document is cut on its own (MDLM's setting for short documents).
A last block shorter than L is padded, never dropped: padding (the EOS token) is visible to the
model but neither masked nor scored. A diffusion model's NLL is its NELBO bound
(likelihood.nelbo: K antithetic time samples per block, a fixed seed); an AR model's is exact,
each block read after one start token. Reported: nats per scored token and its exponential,
the perplexity (a bound for a diffusion model).
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from data import tokenizer_from_meta
from evaluation.likelihood import DEFAULT_TIME_SAMPLES, ar_continuation, nelbo
from loading.checkpoint import load_model, process_of
from plumbing import cli, devices

# MDLM's zero-shot datasets on the Hugging Face hub: (path, config, split, text field)
HUB_DATASETS = {
    "ptb": ("ptb_text_only", None, "test", "sentence"),
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "test", "text"),
    "wikitext103": ("wikitext", "wikitext-103-raw-v1", "test", "text"),
    "lm1b": ("lm1b", None, "test", "text"),
    "ag_news": ("ag_news", None, "test", "text"),
    "pubmed": ("scientific_papers", "pubmed", "test", "article"),
    "arxiv": ("scientific_papers", "arxiv", "test", "article"),
}


def blocks_of(documents, length, mode, bos_id=None, eos_id=None, pad_id=0):
    """Token documents -> (blocks [B, length], real lengths [B]): frame each document with the
    given BOS/EOS ids (None: none), then wrap (concatenate, cut) or pad (cut each document).
    Only a last block can be short; it is padded with pad_id at the end."""
    if mode not in ("wrap", "pad"):
        raise ValueError(f"--mode must be wrap or pad, got {mode!r}")
    framed = [([bos_id] if bos_id is not None else []) + list(doc) + ([eos_id] if eos_id is not None else [])
              for doc in documents]
    streams = [sum(framed, [])] if mode == "wrap" else framed
    pieces = [stream[start:start + length] for stream in streams for start in range(0, len(stream), length)]
    if not pieces:
        raise ValueError("the corpus has no tokens")
    blocks = torch.tensor([piece + [pad_id] * (length - len(piece)) for piece in pieces])
    return blocks, torch.tensor([len(piece) for piece in pieces])


def zero_shot_nll(model, process, blocks, lengths, start_id=None, time_samples=DEFAULT_TIME_SAMPLES, seed=0):
    """(total NLL in nats, scored tokens) over blocks: the NELBO of each block's real tokens
    (diffusion; one generator seeded once), or the exact NLL after start_id (AR)."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for block, n in zip(blocks, lengths.tolist()):
        if process is None:
            total += ar_continuation(model, [start_id], block[:n].tolist())[0]
        else:
            total += nelbo(model, process, block, torch.arange(len(block)) < n, time_samples, generator)
    return total, int(lengths.sum())


def load_documents(name, split):
    """Local text file(s), comma-separated (each file one document, the whole file: `split`
    does not apply), or an MDLM dataset from the hub (needs `datasets` and a network)."""
    paths = [Path(p) for p in name.split(",")]
    if all(p.is_file() for p in paths):
        return [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    if name not in HUB_DATASETS:
        raise ValueError(f"--data {name!r}: not text file(s) nor one of {', '.join(HUB_DATASETS)}")
    path, config, default_split, field = HUB_DATASETS[name]
    try:
        import datasets
        rows = datasets.load_dataset(path, config, split=split or default_split)
    except Exception as e:  # no package, no network, hub down: one line
        raise ValueError(f"could not load {name} from the Hugging Face hub (needs `pip install datasets` "
                         f"and a network): {type(e).__name__}") from None
    return [row[field] for row in rows if row[field].strip()]


@dataclass
class ZeroShotConfig:
    ckpt: str = cli.flag("out/mdlm/ckpt.pt", "the checkpoint (mdlm, sdtt, idlm or ar)")
    data: str = cli.flag("", f"text file(s), comma-separated, or an MDLM dataset: {', '.join(HUB_DATASETS)}")
    split: Optional[str] = cli.flag(None, "split of a hub dataset (default: test); a local file is read whole")
    mode: str = cli.flag("wrap", "wrap: concatenate documents and cut into blocks; pad: cut each document",
                         choices=["wrap", "pad"])
    bos: bool = cli.flag(True, "a BOS token (the tokenizer's EOS) before each document")
    eos: bool = cli.flag(True, "an EOS token after each document")
    seq_len: Optional[int] = cli.flag(None, "block length L (default: the model's context)", at_least=1)
    time_samples: int = cli.flag(DEFAULT_TIME_SAMPLES, "K antithetic time samples of each block's NELBO", at_least=1)
    seed: int = cli.flag(0, "seed of the NELBO's times and masks")
    weights: str = cli.flag("ema", "EMA or raw weights", choices=["ema", "raw"])
    device: str = cli.flag("auto", "auto, cpu or cuda", choices=devices.DEVICES)


def main(argv=None):
    cfg = cli.parse_config(ZeroShotConfig, "Zero-shot likelihood of a checkpoint on a text corpus.", argv)
    if not cfg.data:
        raise ValueError("give the corpus: --data FILE[,FILE...] or a dataset name")
    model, ckpt = load_model(cfg.ckpt, weights=cfg.weights, device=devices.pick(cfg.device))
    process, tokenizer = process_of(ckpt), tokenizer_from_meta(ckpt["data_meta"])
    length = cfg.seq_len or model.config.seq_len
    if length > model.config.seq_len:
        raise ValueError(f"--seq-len {length} exceeds the model's context of {model.config.seq_len}")
    if tokenizer.eos_id is None:
        raise ValueError("zero-shot text needs a tokenizer with an EOS token; this checkpoint saw the synthetic source")
    documents = [tokenizer.encode(text) for text in load_documents(cfg.data, cfg.split)]
    blocks, lengths = blocks_of(documents, length, cfg.mode, tokenizer.eos_id if cfg.bos else None,
                                tokenizer.eos_id if cfg.eos else None, pad_id=tokenizer.eos_id)
    settings = {"ckpt": cfg.ckpt, "kind": ckpt["kind"], "weights": cfg.weights, "data": cfg.data,
                "split": cfg.split or ("test" if cfg.data in HUB_DATASETS else "whole file"),
                "documents": len(documents), "mode": cfg.mode, "bos": cfg.bos, "eos": cfg.eos, "L": length,
                "blocks": len(blocks), "padded": int((lengths < length).sum()), "tokens": int(lengths.sum()),
                "time_samples": cfg.time_samples if process is not None else "exact (AR)", "seed": cfg.seed}
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    total, tokens = zero_shot_nll(model, process, blocks, lengths, tokenizer.eos_id, cfg.time_samples, cfg.seed)
    bound = "<= " if process is not None else ""
    print(f"NLL {total / tokens:.4f} nats/token, perplexity {bound}{math.exp(total / tokens):.2f}")


if __name__ == "__main__":
    cli.run_command(main)
