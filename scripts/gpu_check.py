"""One command for whoever has a GPU: does the paper-scale path work there, and how fast?

    python scripts/gpu_check.py                     # about 15 minutes on one H100
    python scripts/gpu_check.py --quick             # the same checks, 4 steps each, no compile

1. 20 real training steps of each method (MDLM pretraining, SDTT, IDLM) at the `small` preset,
   L = 1024, GPT-2's vocabulary, bf16, torch.compile off and on: tokens/s, MFU and peak
   memory, from each run's log.jsonl. The teacher is random, in the hub's layout; the text is
   generated (scripts/dress_rehearsal.py makes both).
2. flash-attn (when installed) against SDPA: the largest logit difference of the DiT in bf16.
3. bench.py's latency table at SDTT Table 2's sizes, the sampler at 16, 32 and 64 steps.

Prints a table and writes every figure to --json. On a machine without a CUDA GPU it stops
with one line: there is nothing to check there (scripts/dress_rehearsal.py is the CPU run).
"""
import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

METHODS = {"mdlm": [], "sdtt": ["--distill", "sdtt", "--rounds", "1"], "idlm": ["--distill", "idlm"]}


def train_run(method, compiled, work, teacher, text, steps):
    """One training run; its last throughput record of log.jsonl, plus wall seconds."""
    out = work / f"{method}-{'compile' if compiled else 'eager'}"
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "train.py", *METHODS[method], "--size", "small", "--seq-len", "1024", "--data", str(text),
            "--vocab-size", "50257", "--batch-size", "32", "--iters", str(steps), "--log-every", str(steps),
            "--eval-every", "0", "--eval-batches", "1", "--eval-samples", "0", "--device", "cuda",
            "--out-dir", str(out), *(["--teacher", str(teacher)] if method != "mdlm" else []),
            *(["--compile"] if compiled else [])]
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last = [r for r in records if "tokens_per_s" in r][-1]
    return {**last, "seconds": time.perf_counter() - start}


def attention_parity(teacher):
    """Largest |logit| difference of the bf16 DiT with flash-attn against SDPA (None: no flash-attn)."""
    import torch

    import model as model_py
    from loading import checkpoint
    if model_py.flash_attn_func is None:
        return None
    dit, _ = checkpoint.load_model(teacher, device="cuda")
    tokens = torch.randint(0, dit.config.vocab_size + 1, (4, 1024), device="cuda")
    sigma = torch.zeros(4, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        flash = dit(tokens, sigma).float()
        kept, model_py.flash_attn_func = model_py.flash_attn_func, None
        sdpa = dit(tokens, sigma).float()
        model_py.flash_attn_func = kept
    return {"max_abs_diff": (flash - sdpa).abs().max().item(), "max_abs_logit": sdpa.abs().max().item()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="out/gpu_check")
    parser.add_argument("--json", default="results/gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="4 steps per run, compile off, one bench size")
    args = parser.parse_args()
    import torch
    if not torch.cuda.is_available():
        sys.exit("error: scripts/gpu_check.py needs a CUDA GPU and there is none here "
                 "(on a CPU, run scripts/dress_rehearsal.py)")
    import dress_rehearsal
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    teacher, text = work / "teacher", work / "corpus.jsonl"
    if not (teacher / "model.safetensors").exists():
        dress_rehearsal.write_teacher(teacher, "small")
    if not text.exists():
        dress_rehearsal.write_text(text, 20)
    steps, compiles = (4, [False]) if args.quick else (20, [False, True])
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "training": {}}
    print(f"{'method':<6} {'compile':<8} {'tokens/s':>10} {'MFU':>6} {'peak GB':>8} {'seconds':>8}")
    for method in METHODS:
        for compiled in compiles:
            r = train_run(method, compiled, work, teacher, text, steps)
            results["training"][f"{method}/{'compile' if compiled else 'eager'}"] = r
            if "error" in r:
                print(f"{method:<6} {str(compiled):<8} failed: {r['error']}")
            else:
                print(f"{method:<6} {str(compiled):<8} {r['tokens_per_s']:>10,.0f} {r['mfu']:>6.1%} "
                      f"{r['peak_memory_gb']:>8.1f} {r['seconds']:>8.0f}", flush=True)
    results["flash_vs_sdpa"] = attention_parity(teacher)
    print(f"flash-attn vs SDPA logits: {results['flash_vs_sdpa'] or 'flash-attn not installed'}")
    sizes = ["small"] if args.quick else ["small", "medium", "large", "1.3B"]
    bench = [sys.executable, "bench.py", "--only", "latency", "--steps", "16", "32", "64", "--sizes", *sizes,
             "--json", str(work / "bench.json"), "--device", "cuda"]
    results["bench_returncode"] = subprocess.run(bench, cwd=ROOT).returncode
    if results["bench_returncode"] == 0:
        results["bench"] = json.loads((work / "bench.json").read_text())
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
