"""watching/show.py: frames drawn as text with MASK as a placeholder, new tokens highlighted, a counter of
steps and forward passes, redrawn in place; sample.py --show animates only in a terminal."""
import io
import os
import pty
import subprocess
import sys

import torch

from data import SymbolTokenizer, Tokenizer
from helpers import ROOT, V, run_script, save_tiny_checkpoint
from watching.show import NEW, PLACEHOLDER, Animation, TokenTexts, render, separator

SYMBOLS = SymbolTokenizer(V)


class ControlTokenizer(SymbolTokenizer):
    """Tokens that decode to terminal control characters: ESC [31m (red), BEL, a carriage return."""

    def __init__(self):
        super().__init__(V)
        self.symbols[:4] = ["\x1b[31mred", "bell\x07", "back\r", "tab\tline\n"]


def test_control_characters_are_shown_as_escapes_not_obeyed():
    texts = TokenTexts(ControlTokenizer(), V)
    shown = render(texts, [0, 1, 2, 3], None, colour=False)
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert r"\x1b[31mred" in shown and r"bell\x07" in shown and r"back\r" in shown and "tab\tline\n" in shown


def test_the_separator_is_what_the_tokenizer_puts_between_tokens():
    assert separator(SYMBOLS) == " " and separator(Tokenizer()) == ""


def test_a_frame_shows_masks_as_placeholders_and_highlights_only_new_tokens():
    texts = TokenTexts(SYMBOLS, V)
    assert render(texts, [0, V, 2, V], None, colour=False) == f"a {PLACEHOLDER} c {PLACEHOLDER}"
    coloured = render(texts, [0, 1, 2, V], [0, V, 2, V])
    assert f"{NEW} b" in coloured and f"{NEW}a" not in coloured and f"{NEW} c" not in coloured


def test_the_animation_counts_steps_and_forwards_and_redraws_in_place():
    out = io.StringIO()
    animation = Animation(SYMBOLS, V, 2, 0.0, out=out)
    animation(0, torch.tensor([[0, V, V]]), 0.0)
    animation(1, torch.tensor([[0, 3, V]]), 1.0)
    animation(2, torch.tensor([[0, 3, 1]]), 2.0)
    written = out.getvalue()
    assert "step 0/2 · 0 forward passes" in written and "step 2/2 · 2 forward passes" in written
    assert written.count("\x1b[") > 3 and "\x1b[3F" in written  # status, sample, rule: 3 lines up


def test_sample_show_animates_in_a_terminal_and_prints_the_final_text_elsewhere(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    args = ["sample.py", "--ckpt", str(ckpt), "--steps", "4", "--num-samples", "2", "--prompt", "a [MASK:3] b",
            "--show-seconds", "0"]
    plain = run_script(*args)
    piped = run_script(*args, "--show")
    assert piped.returncode == 0 and piped.stdout == plain.stdout and "\x1b[" not in piped.stdout

    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, *args, "--show"], cwd=ROOT, stdout=terminal, stderr=terminal,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=60) == 0
    shown = b"".join(chunks).decode()
    assert "step 0/4" in shown and "step 4/4" in shown and PLACEHOLDER in shown and NEW in shown
    for text in plain.stdout.split("---------------\n")[:-1]:
        assert text.strip() in shown.replace(NEW, "").replace("\x1b[0m", "")
