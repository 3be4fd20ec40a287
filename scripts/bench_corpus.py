"""Corpus preparation at scale (corpora/corpus.py's prepare_corpus): tokens/s and peak memory on a
generated local corpus, at two sizes and several process counts. Memory must not grow with the
corpus (the ids stream to disk) and throughput should grow with processes.

    python scripts/bench_corpus.py                       # 200 MB and 800 MB, 1 and 2 processes
    python scripts/bench_corpus.py --sizes-mb 50 --procs 1 4 --work-dir /scratch

Each measurement runs in a fresh process, so its peak RSS is its own: `main` is the process that
streams the ids to disk, `worker` the largest tokenizer process of its pool.
"""
import argparse
import json
import random
import resource
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generate(path, megabytes, seed=0):
    """A .jsonl corpus of about `megabytes` MB: 2,000 distinct documents of pseudo-English,
    written over and over (each copy numbered) until the size is reached."""
    if path.exists() and path.stat().st_size >= megabytes * 1e6:
        return path
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 9))) for _ in range(20_000)]
    base = [" ".join(rng.choices(words, k=rng.randint(200, 1500))) + "." for _ in range(2_000)]
    path.parent.mkdir(parents=True, exist_ok=True)
    written, copy = 0, 0
    with open(path.with_suffix(".partial"), "w") as out:
        while written < megabytes * 1e6:
            lines = "".join(json.dumps({"text": f"Copy {copy}. {text}"}) + "\n" for text in base)
            out.write(lines)
            written, copy = written + len(lines), copy + 1
    path.with_suffix(".partial").rename(path)
    return path


def measure(corpus_path, num_proc, data_dir):
    """One preparation in this process; prints its figures as JSON."""
    from corpora import corpus, gpt2
    gpt2.DATA_DIR = Path(data_dir)
    start = time.perf_counter()
    folder = corpus.prepare_corpus("bench", corpus.file_documents([Path(corpus_path)]), 50257, num_proc)
    seconds = time.perf_counter() - start
    tokens = json.loads((folder / "meta.json").read_text())["tokens"]
    main_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    shutil.rmtree(folder)
    print(json.dumps({"tokens": tokens, "seconds": seconds, "main_mb": main_kb / 1024, "worker_mb": worker_kb / 1024}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[200, 800])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--work-dir", default="/tmp/bench_corpus", help="where the corpora and the ids go")
    parser.add_argument("--measure", nargs=2, metavar=("CORPUS", "NUM_PROC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work_dir)
    if args.measure:
        return measure(args.measure[0], int(args.measure[1]), work / "data")
    print(f"{'corpus':>8} {'procs':>5} {'tokens':>12} {'seconds':>8} {'tokens/s':>10} {'main MB':>8} {'worker MB':>9}")
    for megabytes in args.sizes_mb:
        start = time.perf_counter()
        corpus_path = generate(work / f"corpus-{megabytes}mb.jsonl", megabytes)
        print(f"(corpus of {corpus_path.stat().st_size / 1e6:.0f} MB ready in {time.perf_counter() - start:.0f} s)")
        for num_proc in args.procs:
            result = subprocess.run([sys.executable, __file__, "--work-dir", str(work), "--measure", str(corpus_path),
                                     str(num_proc)], capture_output=True, text=True, check=True)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{megabytes:>6}MB {num_proc:>5} {r['tokens']:>12,} {r['seconds']:>8.1f} "
                  f"{r['tokens'] / r['seconds']:>10,.0f} {r['main_mb']:>8.0f} {r['worker_mb']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
