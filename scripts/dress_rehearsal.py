"""Dress rehearsal of the paper's path on CPU, at the real shapes: the `small` DiT (169M
parameters, L = 1024, GPT-2's vocabulary + MASK = 50258) as a teacher in the Hugging Face hub's
layout, a few MB of local text prepared by data.prepare_corpus, 2 SDTT steps and 2 IDLM steps
through train.py, sampling at 2 steps with sample.py, and GenPPL under a tiny local GPT-2 with
the GPT-2 Large judge's protocol. Prints seconds and peak memory per stage.

    python scripts/dress_rehearsal.py --work-dir /tmp/rehearsal

Nothing is downloaded: the teacher is random, the judge a random 2-layer GPT-2 with GPT-2's
tokenizer (built from tiktoken's ranks). Needs requirements-gpu.txt (safetensors, transformers).
"""
import argparse
import base64
import json
import os
import random
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_tiny_gpt2(folder, context=1024, seed=0):
    """A random 2-layer GPT-2 with GPT-2's tokenizer, as a local Hugging Face folder."""
    import torch
    import transformers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from corpora.gpt2 import GPT2_EOS, GPT2_PATTERN, gpt2_encoding
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ranks = folder / "gpt2.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(token).decode()} {rank}\n"
                             for token, rank in gpt2_encoding()._mergeable_ranks.items()))
    converter = TikTokenConverter(vocab_file=str(ranks), pattern=GPT2_PATTERN,
                                  extra_special_tokens={"<|endoftext|>": GPT2_EOS})
    transformers.PreTrainedTokenizerFast(tokenizer_object=converter.converted(), eos_token="<|endoftext|>",
                                         bos_token="<|endoftext|>").save_pretrained(folder)
    torch.manual_seed(int(seed))
    config = transformers.GPT2Config(vocab_size=GPT2_EOS + 1, n_positions=int(context), n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def write_teacher(folder, size, seed=0):
    """A random DiT of the preset, every weight nudged (so its outputs depend on its input), in
    the hub's layout."""
    import torch

    from loading import hub
    from model import DiT, config_for
    torch.manual_seed(int(seed))
    model = DiT(config_for(size, vocab_size=hub.GPT2_VOCAB, seq_len=1024))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return hub.save_folder(model, folder)


def write_text(path, megabytes, seed=0):
    """Pseudo-English documents, one JSON line each, about `megabytes` MB."""
    rng = random.Random(int(seed))
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 8))) for _ in range(3000)]
    with open(path, "w") as out:
        while out.tell() < float(megabytes) * 1e6:
            text = " ".join(rng.choices(words, k=rng.randint(100, 800))) + "."
            out.write(json.dumps({"text": text}) + "\n")
    return path


def share_tokenizer(data_dir):
    """The stages prepare their corpus under data_dir (MDLM_DATA_DIR), not in the repository's
    data/, with the GPT-2 ranks of the usual data folder when it has them (no download)."""
    from corpora.gpt2 import DATA_DIR
    data_dir.mkdir(parents=True)
    for name in ("tokenizer", "downloads"):
        if (DATA_DIR / name).exists():
            (data_dir / name).symlink_to((DATA_DIR / name).resolve())
    os.environ["MDLM_DATA_DIR"] = str(data_dir)


def run_stage(args):
    """A command in a child process: (seconds, its own peak RSS in bytes)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"error: stage {' '.join(args[:2])} failed with exit code {proc.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def in_child(function, *args):
    """Run function(*args) of this file in a child process, timed and measured like a stage."""
    return run_stage([__file__, "--call", function, *map(str, args)])


def judge_samples(judge_folder, samples_file):
    """GenPPL of sample.py's samples under the local GPT-2, with the GPT-2 Large protocol."""
    import torch

    import evaluate
    tokens = torch.tensor([json.loads(line)["tokens"] for line in open(samples_file)])
    judge = evaluate.load_judge(judge_folder, {"kind": "gpt2", "gpt2_ids": None}, "cpu")
    nll = judge.nll_per_token(tokens)
    print(f"GenPPL under the tiny judge: {nll.double().mean().exp().item():.1f} ({len(tokens)} samples)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="/tmp/dress_rehearsal")
    parser.add_argument("--size", default="small", help="model preset of the teacher (small: the paper's)")
    parser.add_argument("--text-mb", type=float, default=3.0)
    parser.add_argument("--call", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.call:
        return globals()[args.call[0]](*args.call[1:])
    work = Path(args.work_dir)
    for run in ("sdtt", "idlm", "data"):
        shutil.rmtree(work / run, ignore_errors=True)
    share_tokenizer(work / "data")
    teacher, judge, text = work / "teacher", work / "judge", work / "corpus.jsonl"
    common = ["--teacher", str(teacher), "--data", str(text), "--judge", str(judge), "--device", "cpu",
              "--iters", "2", "--batch-size", "2", "--eval-every", "0", "--eval-batches", "1", "--eval-samples", "0"]
    stages = [
        ("teacher in the hub's layout", lambda: in_child("write_teacher", teacher, args.size)),
        ("tiny GPT-2 judge", lambda: in_child("write_tiny_gpt2", judge)),
        ("local text", lambda: in_child("write_text", text, args.text_mb)),
        ("corpus preparation", lambda: run_stage(["-c", f"import data; data.load_data({str(text)!r}, 50257)"])),
        ("SDTT, 2 steps", lambda: run_stage(["train.py", "--distill", "sdtt", "--rounds", "1", *common,
                                             "--out-dir", str(work / "sdtt")])),
        ("IDLM, 2 steps", lambda: run_stage(["train.py", "--distill", "idlm", *common, "--out-dir", str(work / "idlm")])),
        ("sampling at 2 steps", lambda: run_stage(["sample.py", "--ckpt", str(work / "sdtt" / "round0.pt"), "--steps",
                                                   "2", "--num-samples", "2", "--device", "cpu",
                                                   "--jsonl", str(work / "samples.jsonl")])),
        ("judging", lambda: in_child("judge_samples", judge, work / "samples.jsonl")),
    ]
    report = []
    for name, stage in stages:
        print(f"== {name}", flush=True)
        seconds, peak = stage()
        report.append((name, seconds, peak))
    print(f"\n{'stage':<30} {'seconds':>8} {'peak RSS (GB)':>14}")
    for name, seconds, peak in report:
        print(f"{name:<30} {seconds:>8.1f} {peak / 1e9:>14.2f}")


if __name__ == "__main__":
    main()
