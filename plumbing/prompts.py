"""Prompts with gaps: text such as `The [MASK:12] of Denmark` as a template of fixed tokens and
masked positions, for infilling (sample.py --prompt).

A gap marker is `[MASK:N]` (N masked tokens there) or a bare `[MASK]` (`gap` tokens, a flag).
The text between markers is tokenized piece by piece; the white space just before a marker is
dropped, since the gap's first token carries its own leading space, as GPT-2's tokens do. A
template is a list of token ids with None at the gap positions: a sampler starts from MASK
there and from the fixed tokens elsewhere, which it never changes.
"""
import re

GAP = re.compile(r"\[MASK(?::(\d+))?\]")
MARKER_START = "[MASK"


def check_markers(text):
    """Every '[MASK' begins a well-formed marker; otherwise one clear error."""
    position = text.find(MARKER_START)
    while position != -1:
        if not GAP.match(text, position):
            shown = text[position:text.find("]", position) + 1 or None][:20]
            raise ValueError(f"malformed gap marker {shown!r} at character {position} of the prompt: "
                             "write [MASK:N] for N masked tokens, or [MASK] (--gap tokens)")
        position = text.find(MARKER_START, position + 1)


def gap_lengths(text, gap):
    """The number of masked tokens of each marker of text, in order."""
    lengths = [gap if match.group(1) is None else int(match.group(1)) for match in GAP.finditer(text)]
    if any(n < 1 for n in lengths):
        raise ValueError("a gap marker must mask at least one token: [MASK:N] with N >= 1")
    return lengths


def template(text, encode, gap, seq_len):
    """The prompt as a template [token id or None] of at most seq_len positions (None: a gap)."""
    check_markers(text)
    lengths = gap_lengths(text, gap)
    for n in lengths:
        if n > seq_len:
            raise ValueError(f"a gap of {n} tokens is longer than the {seq_len} tokens of a sample")
    pieces = GAP.split(text)[::2]  # split() also returns each marker's count (None for a bare one)
    tokens = []
    for i, piece in enumerate(pieces):
        tokens += encode(piece.rstrip() if i < len(lengths) else piece)
        if i < len(lengths):
            tokens += [None] * lengths[i]
    if len(tokens) > seq_len or (len(tokens) == seq_len and None not in tokens):
        gaps = " with its gaps" if None in tokens else ""
        raise ValueError(f"the prompt is {len(tokens)} tokens{gaps}: it must leave a token to make within the "
                         f"{seq_len} tokens of a sample")
    return tokens
