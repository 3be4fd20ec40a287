"""The README's figure: a teacher and its students unmasking one sample, as a PNG strip.

    python scripts/trace_figure.py --ckpt out/mdlm/ckpt.pt out/sdtt/round1.pt --labels teacher "SDTT student" \
        --out results/trace_figure.png

One row per checkpoint, sampled on the same seed with the steps it was distilled for (else
--steps), traced by tracing.Traced; one column per moment of the sampling time (t = 1 down to
0). Each token is coloured by the step that revealed it, as in sample.py --trace (early: blue,
late: red); a grey block is a position still masked. The first --tokens positions are drawn.
"""
import colorsys
import math
import sys
from pathlib import Path

import torch
from matplotlib.font_manager import findfont
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import tokenizer_from_meta  # noqa: E402
from evaluate import generate  # noqa: E402
from loading.checkpoint import DIFFUSION_KINDS, default_steps, load_model, process_of  # noqa: E402
from plumbing import cli  # noqa: E402
from samplers import make_sampler  # noqa: E402
from watching.show import TokenTexts  # noqa: E402
from watching.tracing import Traced  # noqa: E402

CELL, LINE, PAD, HEADER, LABEL = 330, 17, 8, 26, 170


def traced_sample(path, steps, seed, tokens):
    """(trace of one sample, its token texts, the steps used) of the checkpoint at path."""
    model, ckpt = load_model(path, DIFFUSION_KINDS)
    recorded = default_steps(ckpt)
    steps = steps or (recorded[0] if recorded else model.config.seq_len)
    traced = Traced(make_sampler())
    generate(model, process_of(ckpt), 1, model.config.seq_len, steps, sampler=traced,
             generator=torch.Generator().manual_seed(seed))
    trace = traced.trace()
    trace.frames = trace.frames[:, :, :tokens]
    return trace, TokenTexts(tokenizer_from_meta(ckpt["data_meta"]), trace.mask_id), steps


def colour(frame, steps):
    """The page's colour of a token revealed at `frame` of `steps` (hue 240 early to 0 late)."""
    hue = 240 * (1 - (frame - 1) / max(1, steps - 1)) / 360
    return tuple(round(255 * c) for c in colorsys.hls_to_rgb(hue, 0.85, 0.85))


def draw_cell(draw, font, x, y, trace, texts, k, lines):
    """The sample at frame k, wrapped in a CELL-wide box of `lines` lines."""
    row, changed = trace.frames[k, 0].tolist(), trace.changed_at()[0].tolist()
    cx, cy = x + PAD, y
    for i, text in enumerate(texts(row)):
        masked = text is None
        for word_index, word in enumerate((texts.placeholder(i) if masked else text).split("\n")):
            if word_index or cx + font.getlength(word) > x + CELL - PAD:
                cx, cy = x + PAD, cy + LINE
            if cy >= y + lines * LINE:
                return
            width = font.getlength(word)
            if masked:
                draw.text((cx, cy), word, font=font, fill=(190, 190, 190))
            else:
                if changed[i] > 0:
                    draw.rectangle([cx, cy + 1, cx + width, cy + LINE - 1], fill=colour(changed[i], trace.steps))
                draw.text((cx, cy), word, font=font, fill=(20, 20, 20))
            cx += width


def figure(rows, moments, lines, path):
    font = ImageFont.truetype(findfont("DejaVu Sans Mono"), 12)  # matplotlib's own copy of the font
    bold = ImageFont.truetype(findfont("DejaVu Sans"), 13)
    height = HEADER + len(rows) * (lines * LINE + PAD)
    image = Image.new("RGB", (LABEL + moments * CELL, height), "white")
    draw = ImageDraw.Draw(image)
    for m in range(moments):
        fraction = m / (moments - 1)
        draw.text((LABEL + m * CELL + PAD, 6), f"t = {1 - fraction:.2f}: {100 * fraction:.0f}% of the steps",
                  font=bold, fill=(0, 0, 0))
    for r, (label, trace, texts) in enumerate(rows):
        y = HEADER + r * (lines * LINE + PAD)
        draw.line([0, y - 2, image.width, y - 2], fill=(200, 200, 200))
        for n, text in enumerate(label.split("\n")):
            draw.text((PAD, y + n * LINE), text, font=bold, fill=(0, 0, 0))
        for m in range(moments):
            k = math.floor(m / (moments - 1) * trace.steps + 0.5)
            draw_cell(draw, font, LABEL + m * CELL, y, trace, texts, k, lines)
    image.save(path, optimize=True)


def main():
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", nargs="+", required=True, help="teacher first, then students")
    parser.add_argument("--labels", nargs="+", help="one per checkpoint (default: the paths)")
    parser.add_argument("--steps", nargs="+", type=int, help="one per checkpoint (default: a student's own steps, "
                                                             "else the context length)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=40, help="positions drawn")
    parser.add_argument("--moments", type=int, default=5, help="columns, from t = 1 to 0")
    parser.add_argument("--lines", type=int, default=6, help="text lines per cell")
    parser.add_argument("--out", default="results/trace_figure.png")
    args = parser.parse_args()
    labels, steps = args.labels or args.ckpt, args.steps or [None] * len(args.ckpt)
    if len(labels) != len(args.ckpt) or len(steps) != len(args.ckpt) or args.moments < 2:
        raise ValueError("give one --labels and one --steps per checkpoint, and --moments of at least 2")
    rows = []
    for path, label, n in zip(args.ckpt, labels, steps):
        trace, texts, used = traced_sample(path, n, args.seed, args.tokens)
        rows.append((f"{label}\n{used} steps\n{trace.forwards[-1, 0]:g} forward passes", trace, texts))
    figure(rows, args.moments, args.lines, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1000:.0f} KB)")


if __name__ == "__main__":
    cli.run_command(main)
