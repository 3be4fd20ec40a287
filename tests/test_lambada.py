"""evaluation/lambada.py: SDTT's one-pass LAMBADA protocol."""
import math

import torch

from diffusion import MaskingProcess
from evaluation.lambada import lambada
from helpers import L, V, tiny_model


class CountingModel(torch.nn.Module):
    """Wraps a DiT and records the tokens of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, tokens, sigma):
        self.calls.append(tokens.clone())
        return self.model(tokens, sigma)


class CharTokenizer:
    """One token per character, so that a last word is several tokens."""

    def encode(self, text):
        return [ord(c) % V for c in text]


def test_lambada_decodes_each_last_word_in_one_forward_pass():
    examples = ["the cat sat on the mat", "a b ccc", "one two three four", "x" * 40 + " yz"]
    model = CountingModel(tiny_model())
    result = lambada(model, MaskingProcess(V), examples, CharTokenizer(), "cpu", nelbo_samples=4)
    decoding = [z for z in model.calls if z.shape[0] == 1]
    assert result["n"] == result["forward_passes"] == len(examples) == len(decoding)
    assert len(model.calls) == 2 * len(examples)  # plus one batched NELBO estimate per example
    for z, text in zip(decoding, examples):
        word = len(text.rsplit(maxsplit=1)[1]) + 1  # the space belongs to the word, as in GPT-2
        assert (z[0, -word:] == V).all() and (z[0, :-word] != V).all() and z.shape[1] <= L
    assert 0 <= result["accuracy"] <= 1 and 1 < result["ppl_bound"] < math.inf
