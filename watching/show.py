"""Watching a masked diffusion model unmask, in the terminal (sample.py --show).

Each frame of a trace (watching/tracing.py) redraws the samples in place: MASK positions as a placeholder,
the tokens a step revealed highlighted in that frame, and a counter of the steps and of the
forward passes made so far. The frames are drawn as the sampler makes them, at most
`seconds` / frames apart, so a fast model still shows every step.
"""
import math
import shutil
import sys
import time
import unicodedata

PLACEHOLDER = "░"
NEW, DIM, RESET = "\x1b[1;32m", "\x1b[2m", "\x1b[0m"  # bold green: revealed by this step


def visible(text):
    """text with every control character but newline and tab as a visible escape (GPT-2 has byte
    tokens for ESC and the rest, which a terminal would obey rather than show)."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text)


def separator(tokenizer):
    """What the tokenizer puts between two decoded tokens ('' for GPT-2's BPE, ' ' for symbols)."""
    one = tokenizer.decode([0])
    return tokenizer.decode([0, 0])[len(one):-len(one) or None]


class TokenTexts:
    """The text of each position of a row of tokens, MASK as the placeholder: decoded token by
    token (cached), so that frames made of a mix of MASK and tokens can be shown."""

    def __init__(self, tokenizer, mask_id):
        self.tokenizer, self.mask_id, self.cache = tokenizer, mask_id, {}
        self.sep = separator(tokenizer)

    def text(self, token):
        if token == self.mask_id:
            return None
        if token not in self.cache:
            self.cache[token] = visible(self.tokenizer.decode([token]))
        return self.cache[token]

    def __call__(self, row):
        """[(text or None for MASK, with the separator before every position but the first)]."""
        return [(None if (t := self.text(int(token))) is None else (self.sep if i else "") + t)
                for i, token in enumerate(row)]

    def placeholder(self, i):
        return (self.sep if i else "") + PLACEHOLDER


def render(texts, row, previous, colour=True):
    """One sample as terminal text: new tokens (changed since `previous`) highlighted."""
    parts = []
    for i, text in enumerate(texts(row)):
        if text is None:
            parts.append(f"{DIM}{texts.placeholder(i)}{RESET}" if colour else texts.placeholder(i))
        elif colour and previous is not None and row[i] != previous[i]:
            parts.append(f"{NEW}{text}{RESET}")
        else:
            parts.append(text)
    return "".join(parts)


def status(label, k, steps, forwards):
    total = f"/{steps}" if steps else ""
    return f"{label}step {k}{total} · {forwards:g} forward passes per sequence"


class Animation:
    """on_frame for tracing.Traced: redraws a batch's samples in place at each frame."""

    def __init__(self, tokenizer, mask_id, steps, seconds, label="", out=None):
        self.texts, self.steps, self.label = TokenTexts(tokenizer, mask_id), steps, label
        self.delay = seconds / (steps + 1) if steps else 0.0
        self.out = out or sys.stdout
        self.previous, self.lines, self.shown_at = None, 0, 0.0

    def __call__(self, k, tokens, forwards):
        wait = self.shown_at + self.delay - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if k == 0:  # a new batch starts below the last one
            self.previous, self.lines = None, 0
        body = [render(self.texts, row, None if self.previous is None else self.previous[n])
                for n, row in enumerate(tokens.tolist())]
        text = "\n".join([status(self.label, k, self.steps, forwards), *body, "-" * 15])
        up = f"\x1b[{self.lines}F\x1b[J" if self.lines else ""
        self.out.write(up + text + "\n")
        self.out.flush()
        self.lines = screen_lines(text)
        self.previous, self.shown_at = tokens.tolist(), time.monotonic()


def screen_lines(text):
    """How many terminal lines text takes (its colour codes take none), to redraw it in place."""
    width = shutil.get_terminal_size().columns
    plain = text.replace(NEW, "").replace(DIM, "").replace(RESET, "")
    return sum(max(1, math.ceil(len(line) / width)) for line in plain.split("\n"))
