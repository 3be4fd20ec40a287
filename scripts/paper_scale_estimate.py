"""results/paper_scale.md's table: time and memory per stage of the paper's runs on one 80 GB
GPU, estimated from FLOP counts (plumbing/flops.py) and an assumed utilisation, not measured.

    python scripts/paper_scale_estimate.py --mfu 0.35 --gpu h100

Replace --mfu by the MFU that scripts/gpu_check.py measures on your GPU (log.jsonl's `mfu`).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import DiT, config_for  # noqa: E402
from plumbing import devices  # noqa: E402
from plumbing.flops import GPUS, count_params, step_flops_per_token  # noqa: E402

L, V = 1024, 50257
GB = 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilisation in training")
    parser.add_argument("--sampling-mfu", type=float, default=0.15, help="assumed utilisation when sampling")
    parser.add_argument("--gpu", default="h100", choices=list(GPUS))
    parser.add_argument("--owt-tokens", type=float, default=9.0e9, help="OpenWebText's GPT-2 tokens")
    parser.add_argument("--tokenize-rate", type=float, default=1.5e6,
                        help="tokens/s of one tokenizer process (scripts/bench_corpus.py)")
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--worker-rss-gb", type=float, default=0.25,
                        help="peak RSS of one tokenizer process (scripts/bench_corpus.py)")
    args = parser.parse_args()
    peak = GPUS[args.gpu][0]
    cfg = config_for("small", vocab_size=V, seq_len=L)
    model = DiT(cfg)
    weights = count_params(model) * 4  # float32
    per_sequence = devices.training_bytes_per_sequence(V + 1, cfg.n_embd, cfg.n_layer, L)
    forward = step_flops_per_token(model, L, 0, 1)  # one forward pass
    judge_forward = 2 * 774e6 + 4 * 36 * 1280 * L  # GPT-2 Large: 774M weights, 36 layers of 1280
    rows = []

    def training(name, passes, batch, steps, copies, adam_copies, micro):
        flop = step_flops_per_token(model, L, *passes) * batch * L * steps
        memory = weights * copies + weights * 3 * adam_copies + per_sequence * micro  # grads + Adam's two moments
        rows.append((name, f"{flop:.2e}", flop / (peak * args.mfu) / 3600, memory / GB))

    rows.append(("OpenWebText preparation (CPU)", "-",
                 args.owt_tokens / (args.tokenize_rate * args.processes) / 3600, (args.processes + 1) * args.worker_rss_gb))
    training("SDTT, 7 rounds x 10k steps, batch 128", (1, 2), 128, 70_000, 3, 1, 16)  # sdtt.distill's passes, n = 2
    training("IDLM, 10k steps, batch 512", (2, 3), 512, 10_000, 4, 2, 16)  # idlm.distill's passes
    sampling = forward * L * L * 1024  # 1024 samples at 1024 steps, no caching
    rows.append(("teacher samples, 1024 x 1024 steps, batch 64", f"{sampling:.2e}", sampling / (peak * args.sampling_mfu) / 3600,
                 (weights + 64 * L * (V + 1) * 4 * 3) / GB))
    judge = judge_forward * 1024 * L
    rows.append(("GPT-2 Large judge, 1024 samples, batch 16", f"{judge:.2e}", judge / (peak * args.sampling_mfu) / 3600,
                 (774e6 * 2 + 16 * L * (V + 1) * 4 * 2) / GB))
    print(f"Estimated on one {args.gpu.upper()} ({peak / 1e12:.0f} TFLOP/s bf16), training at {args.mfu:.0%} MFU, "
          f"sampling at {args.sampling_mfu:.0%}:\n")
    print("| stage | FLOPs | hours | peak memory (GB) |\n|---|---|---|---|")
    for name, flop, hours, memory in rows:
        print(f"| {name} | {flop} | {hours:.2f} | {memory:.0f} |")


if __name__ == "__main__":
    main()
