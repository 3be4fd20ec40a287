"""What a small vocabulary costs on the embedded corpus (Shakespeare's plays): for each size N, the
tokens of GPT-2's BPE cut after its first N - 1 tokens (the default since it encodes every text
losslessly) against GPT-2's own 50257, and, for comparison, the share of <unk> that the older
compacted vocabulary (the N - 2 most frequent GPT-2 tokens, EOS and <unk>) left in the text.

    python scripts/vocabulary_cost.py --sizes 1024 2048 4096 8192 16384
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora import corpus, gpt2  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384],
                        help="vocabulary sizes N (EOS included)")
    args = parser.parse_args()
    plays = list(corpus.shakespeare_texts())
    full = [gpt2.gpt2_encoding().encode_ordinary(text) for text in plays]
    total = sum(map(len, full))
    counts = Counter(token for ids in full for token in ids)
    print(f"{len(plays)} plays, {total} GPT-2 tokens\n")
    print("| N | tokens of the cut | x GPT-2's | <unk> share of the older compacted vocabulary |\n|---|---|---|---|")
    for size in args.sizes:
        cut = sum(len(gpt2.merges_encoding(size - 1).encode_ordinary(text)) for text in plays)
        kept = sum(n for _, n in counts.most_common(size - 2))
        print(f"| {size} | {cut} | {cut / total:.3f} | {100 * (1 - kept / total):.1f}% |")


if __name__ == "__main__":
    main()
