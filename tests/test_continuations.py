"""Tests of evaluation/continuations.py: the judge's features are the hidden states it predicts from,
MAUVE separates different texts and not equal ones, continuations are seeded, and the command
writes MAUVE and self-BLEU for every checkpoint and number of steps. MAUVE needs
requirements-eval.txt (skipped without it)."""
import dataclasses
import importlib.util
import sys

import numpy as np
import pytest
import torch

from diffusion import MaskingProcess
from evaluation import continuations, mauve
from loading import checkpoint
from model import GPT, DiT, ModelConfig

needs_mauve = pytest.mark.skipif(importlib.util.find_spec("mauve") is None,
                                 reason="needs the extras of requirements-eval.txt")
META = {"kind": "gpt2", "gpt2_ids": [0, 1, 2, 3, 4, 5, 6, 7, 50256]}  # 9 ids + <unk>; EOS is id 8
VOCAB, LENGTH = 10, 128


def model_of(kind, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, seq_len=LENGTH, n_layer=1, n_head=2, n_embd=16, cond_dim=16, dropout=0.0)
    model = GPT(cfg) if kind == "ar" else DiT(cfg)
    if kind != "ar":
        torch.nn.init.normal_(model.output_layer.linear.weight)
    return model.eval()


def save(model, kind, path):
    checkpoint.save({"kind": kind, "model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                     "ema": None, "data_meta": META}, path)
    return str(path)


class RandomText:
    """Held-out windows of random tokens, in place of a corpus."""

    def batch(self, split, n, seq_len, generator):
        return torch.randint(0, VOCAB - 1, (n, seq_len), generator=generator)


def test_ar_features_are_the_hidden_states_the_judge_predicts_the_next_token_from():
    model, bos = model_of("ar"), 8
    tokens = torch.randint(0, 8, (3, 100), generator=torch.Generator().manual_seed(0))
    features = torch.from_numpy(mauve.ar_features(model, tokens, bos, batch_size=2))
    logits = model(torch.cat([torch.full((3, 1), bos), tokens], 1))[:, -1]
    torch.testing.assert_close(model.lm_head(features), logits)
    with pytest.raises(ValueError, match="do not fit"):
        mauve.ar_features(model, torch.zeros(1, LENGTH, dtype=torch.long), bos)


@needs_mauve
def test_mauve_is_one_for_equal_texts_and_low_for_texts_far_apart():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(200, 8)).astype(np.float32)
    far = rng.normal(size=(200, 8)).astype(np.float32) + 20 * np.eye(8, dtype=np.float32)[0]
    assert mauve.mauve_of_features(p, p) == pytest.approx(1.0)
    assert mauve.mauve_of_features(p, far) < 0.1


def test_continuations_are_seeded_and_as_long_as_the_protocol_says():
    model, process = model_of("mdlm"), MaskingProcess(VOCAB)
    prompts = RandomText().batch("val", 2, continuations.PROMPT_TOKENS, torch.Generator().manual_seed(0))
    first = continuations.continue_prompts(model, process, prompts, 4, seed=1)
    assert first.shape == (2, 5, continuations.CONTINUATION_TOKENS)
    assert torch.equal(first, continuations.continue_prompts(model, process, prompts, 4, seed=1))
    assert not torch.equal(first, continuations.continue_prompts(model, process, prompts, 4, seed=2))


@needs_mauve
def test_command_writes_mauve_and_self_bleu_per_checkpoint_and_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(continuations, "held_out_data", lambda *args: RandomText())
    mdlm, judge = save(model_of("mdlm"), "mdlm", tmp_path / "mdlm.pt"), save(model_of("ar"), "ar", tmp_path / "ar.pt")
    continuations.main(["--ckpts", mdlm, judge, "--steps", "2", "8", "--judge", judge, "--prompts", "10",
                        "--device", "cpu", "--out-dir", str(tmp_path / "out")])
    lines = (tmp_path / "out" / "continuations.csv").read_text().splitlines()
    assert lines[0] == "label,steps,mauve,self_bleu" and len(lines) == 1 + 3  # mdlm at 2 and 8 steps, the AR once
    for line in lines[1:]:
        mauve, bleu = map(float, line.split(",")[2:])
        assert 0 < mauve <= 1 and 0 <= bleu <= 1


def test_without_mauve_text_the_score_names_the_requirements_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "mauve", None)
    with pytest.raises(ValueError, match="requirements-eval.txt"):
        mauve.mauve_of_features(np.zeros((4, 2)), np.zeros((4, 2)))
