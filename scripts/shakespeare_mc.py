"""Build the local multiple-choice task of tests/harness/ (issue 20): 20 held-out lines of
Shakespeare, each cut before its last three words; the choices are the true ending and the
endings of three other lines. Deterministic: rerunning rewrites the same file.

    python scripts/shakespeare_mc.py    # writes tests/harness/shakespeare_mc.jsonl
"""
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import load_data  # noqa: E402

ITEMS, CHOICES, ENDING_WORDS = 20, 4, 3
OUT = Path(__file__).resolve().parents[1] / "tests" / "harness" / "shakespeare_mc.jsonl"


def items(lines, rng):
    """(context, choices, label) per line: the distractors are other lines' endings."""
    picked = rng.sample(lines, ITEMS * CHOICES)
    for i in range(ITEMS):
        group = picked[i * CHOICES:(i + 1) * CHOICES]
        endings = [" ".join(line.split()[-ENDING_WORDS:]) for line in group]
        label = rng.randrange(CHOICES)
        endings[0], endings[label] = endings[label], endings[0]
        yield {"context": " ".join(group[0].split()[:-ENDING_WORDS]), "choices": endings, "label": label}


def main():
    lines = [line for line in load_data("shakespeare").val_texts() if len(line.split()) >= 8]
    rng = random.Random(0)
    OUT.write_text("".join(json.dumps(item) + "\n" for item in items(sorted(set(lines)), rng)))
    print(f"wrote {ITEMS} items to {OUT}")


if __name__ == "__main__":
    main()
