"""SDTT's conditional protocol (appendix A, after Lou et al.): continuations of held-out text,
scored by MAUVE and self-BLEU, for each checkpoint at each number of sampling steps.

    python -m evaluation.continuations --ckpts out/mdlm/ckpt.pt out/sdtt/round6.pt out/idlm/ckpt.pt --steps 16 32 128
    python -m evaluation.continuations --ckpts ... --judge gpt2-large --data openwebtext     # with a network

Each held-out window of 100 tokens is cut into a 50-token prompt and its 50-token reference
continuation; the model writes 5 continuations of each prompt. MAUVE (Pillutla et al. 2021,
mauve-text) compares the model's prompt + continuation texts with the references' in a
judge's feature space: our AR judge's last hidden state at the last token offline; GPT-2 Large
online, where mauve-text itself reads the decoded text (it needs `pip install transformers`).
Self-BLEU (evaluate.self_bleu) of each prompt's 5 continuations, averaged over prompts.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch

from data import held_out_data, tokenizer_from_meta
from evaluate import DEFAULT_AR_JUDGE, generate
from evaluation.mauve import MAUVE_SEED, load_mauve_judge
from evaluation.self_bleu import CONTINUATIONS_PER_PROMPT, self_bleu
from evaluation.sweep import load_checkpoints, write_tables
from plumbing import cli, devices

PROMPT_TOKENS = CONTINUATION_TOKENS = 50  # SDTT appendix A


def held_out_windows(data, n, seed):
    """n windows of prompt + reference continuation from the validation split: [n, 100]."""
    return data.batch("val", n, PROMPT_TOKENS + CONTINUATION_TOKENS, torch.Generator().manual_seed(seed))


def continue_prompts(model, process, prompts, steps, seed, bos_id=None, per_prompt=CONTINUATIONS_PER_PROMPT):
    """per_prompt continuations of CONTINUATION_TOKENS tokens after each prompt [n, P]:
    [n, per_prompt, CONTINUATION_TOKENS]. One generator for the run, so it is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    length = prompts.shape[1] + CONTINUATION_TOKENS
    rows = [generate(model, process, per_prompt, length, steps, prompt=prompt.tolist(), bos_id=bos_id,
                     batch_size=per_prompt, generator=generator)[0][:, prompts.shape[1]:] for prompt in prompts]
    return torch.stack(rows)


# ----------------------------------------------------------------------------- the protocol

def score(model, process, steps, windows, judge, seed, bos_id=None):
    """MAUVE of prompt + continuation against the held-out windows, and mean self-BLEU of each
    prompt's continuations (SDTT appendix A)."""
    prompts = windows[:, :PROMPT_TOKENS]
    continuations = continue_prompts(model, process, prompts, steps, seed, bos_id)
    per_prompt = continuations.shape[1]
    samples = torch.cat([prompts[:, None].expand(-1, per_prompt, -1), continuations], -1).flatten(0, 1)
    bleu = sum(self_bleu(rows.tolist()) for rows in continuations) / len(continuations)
    return {"mauve": judge.mauve(windows, samples, seed=MAUVE_SEED), "self_bleu": bleu}


@dataclass
class ContinuationConfig:
    ckpts: List[str] = cli.flag([], "checkpoints (each row is labelled with its path)")
    rounds: List[str] = cli.flag([], "SDTT run folders: each round*.pt student at the steps it was distilled for")
    steps: List[int] = cli.flag([16, 32, 64, 128], "sampling steps of each --ckpts diffusion model", at_least=1)
    judge: str = cli.flag(DEFAULT_AR_JUDGE, "MAUVE's features: our AR checkpoint (offline) or a Hugging Face "
                          "name, e.g. gpt2-large (needs transformers and a network)")
    data: str = cli.flag("shakespeare", "the held-out text: shakespeare, openwebtext or text file(s)")
    prompts: int = cli.flag(100, f"held-out prompts of {PROMPT_TOKENS} tokens, {CONTINUATIONS_PER_PROMPT} "
                            "continuations each", at_least=2)
    weights: str = cli.flag("ema", "which weights to load", choices=["ema", "raw"])
    seed: int = cli.flag(0, "seed of the prompts and of sampling")
    device: str = cli.flag("auto", "auto, cpu or cuda", choices=devices.DEVICES)
    out_dir: str = cli.flag("results/continuations", "writes continuations.csv and continuations.md here")


def main(argv=None):
    cfg = cli.parse_config(ContinuationConfig, "MAUVE and self-BLEU of continuations (SDTT appendix A).", argv)
    if not cfg.ckpts and not cfg.rounds:
        raise ValueError("give the checkpoints: --ckpts PATH [PATH ...] and/or --rounds DIR")
    device = devices.pick(cfg.device)
    loaded, series, data_meta, _ = load_checkpoints(cfg, device)
    judge = load_mauve_judge(cfg.judge, data_meta, device)
    windows = held_out_windows(held_out_data(cfg.data, data_meta, tokenizer_from_meta(data_meta).vocab_size),
                               cfg.prompts, cfg.seed)
    bos_id = tokenizer_from_meta(data_meta).eos_id
    entries = [(label, model, process, steps) for label, model, process, _ in loaded
               for steps in ([CONTINUATION_TOKENS] if process is None else cfg.steps)]
    entries += [(label, model, process, ckpt["sampling_steps"]) for label, model, process, ckpt in series]
    rows = [{"label": label, "steps": steps, **score(model, process, steps, windows, judge, cfg.seed, bos_id)}
            for label, model, process, steps in entries]
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = write_tables(rows, ["label", "steps", "mauve", "self_bleu"], out, "continuations")
    print(f"MAUVE judge: {cfg.judge}; {cfg.prompts} prompts of {PROMPT_TOKENS} tokens, "
          f"{CONTINUATIONS_PER_PROMPT} continuations of {CONTINUATION_TOKENS} each\n\n{table}\n\nresults in {out}/")


if __name__ == "__main__":
    cli.run_command(main)
