"""Tests of evaluation/zeroshot.py: blocks keep every token (a short corpus is padded, never dropped), the
AR NLL is our AR judge's, padding is never scored, and the command prints every setting."""
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data import Tokenizer
from diffusion import MaskingProcess
from evaluate import ARJudge
from evaluation import zeroshot
from helpers import L, RecordingModel, V, assert_one_error_line, examples, random_dit, run_script, tiny_model
from loading import checkpoint

documents = st.lists(st.lists(st.integers(0, V - 3), max_size=40), min_size=1, max_size=5)


@examples(40)
@given(documents, st.sampled_from(["wrap", "pad"]), st.booleans(), st.booleans())
def test_blocks_keep_every_token_in_order_and_pad_only_at_the_end_of_a_stream(docs, mode, bos, eos):
    bos_id, eos_id = (V - 2 if bos else None), (V - 1 if eos else None)
    framed = [([bos_id] if bos else []) + doc + ([eos_id] if eos else []) for doc in docs]
    if not sum(map(len, framed)):
        with pytest.raises(ValueError, match="no tokens"):
            zeroshot.blocks_of(docs, L, mode, bos_id, eos_id)
        return
    blocks, lengths = zeroshot.blocks_of(docs, L, mode, bos_id, eos_id, pad_id=0)
    assert blocks.shape == (len(lengths), L) and (lengths >= 1).all() and (lengths <= L).all()
    kept = [token for block, n in zip(blocks.tolist(), lengths.tolist()) for token in block[:n]]
    assert kept == sum(framed, [])  # nothing dropped, nothing reordered
    assert all(block[n:] == [0] * (L - n) for block, n in zip(blocks.tolist(), lengths.tolist()))
    if mode == "wrap":
        assert (lengths[:-1] == L).all()  # only the very last block is short
    else:
        assert len(blocks) == sum(-(-len(f) // L) for f in framed)  # each document's blocks are its own


def test_a_corpus_shorter_than_one_block_is_padded_not_dropped():
    blocks, lengths = zeroshot.blocks_of([[1, 2, 3]], L, "wrap", bos_id=None, eos_id=7)
    assert lengths.tolist() == [4] and blocks[0, :4].tolist() == [1, 2, 3, 7]


def test_ar_zero_shot_nll_is_our_judges_and_ignores_padding():
    model, start = tiny_model("ar"), 0
    blocks, lengths = zeroshot.blocks_of([[1, 2, 3, 4, 5], [6] * (L + 3)], L, "pad", pad_id=7)
    total, tokens = zeroshot.zero_shot_nll(model, None, blocks, lengths, start_id=start)
    judge = ARJudge(model, start)
    expected = sum(judge.nll_per_token(block[None, :n]).item() * n for block, n in zip(blocks, lengths.tolist()))
    assert tokens == 5 + L + 3 and total == pytest.approx(expected, rel=1e-5)


def test_diffusion_zero_shot_never_masks_padding_and_scores_only_real_tokens():
    model, process = RecordingModel(random_dit(0, V, L)), MaskingProcess(V)
    blocks, lengths = zeroshot.blocks_of([[1, 2, 3, 4, 5]], L, "pad", pad_id=6)
    total, tokens = zeroshot.zero_shot_nll(model, process, blocks, lengths, time_samples=16, seed=3)
    (inputs,) = model.inputs
    assert tokens == 5 and total > 0 and (inputs[:, 5:] == 6).all() and (inputs[:, :5] == V).any()


def test_command_prints_every_setting_and_a_bound(tmp_path):
    model = tiny_model()
    meta = {"kind": "gpt2", "gpt2_ids": list(range(V - 1)) + [50256]}  # the EOS is id V - 1
    checkpoint.save({"kind": "mdlm", "model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
                     "ema": None, "data_meta": meta}, tmp_path / "mdlm.pt")
    text = "!\"#$%&'" * 5
    (tmp_path / "a.txt").write_text(text)
    tokens = len(Tokenizer(meta["gpt2_ids"]).encode(text)) + 2  # with the BOS and the EOS
    result = run_script("-m", "evaluation.zeroshot", "--ckpt", str(tmp_path / "mdlm.pt"), "--data", str(tmp_path / "a.txt"),
                        "--mode", "pad", "--time-samples", "2", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    settings = result.stdout.splitlines()[0]
    for name in ("split=whole file", "mode=pad", "bos=True", "eos=True", f"L={L}", "time_samples=2", "seed=0",
                 "weights=ema", f"tokens={tokens}", f"blocks={-(-tokens // L)}", "padded=1"):
        assert name in settings, settings
    assert "perplexity <= " in result.stdout
    line = assert_one_error_line(run_script("-m", "evaluation.zeroshot", "--ckpt", str(tmp_path / "mdlm.pt"), "--data", "nope"))
    assert "nor one of" in line
