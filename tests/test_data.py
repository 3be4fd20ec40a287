"""data.py and corpora/: the offline GPT-2 tokenizer, the small vocabularies (GPT-2's BPE cut), corpora, the synthetic source."""
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import data
from corpora import corpus as corpora_corpus
from corpora import gpt2
from helpers import assert_one_error_line, run_script


def test_gpt2_tokenizer_works_offline():
    assert gpt2.gpt2_encoding().encode("Hello world") == [15496, 995]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setattr(gpt2, "DATA_DIR", tmp_path / "data")
    docs = ["the cat sat on the mat. " * 20, "the dog sat on the log. " * 20 + " zebra"]
    return data.TokenStream(corpora_corpus.prepare_corpus("toy", docs, vocab_size=300))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.text(max_size=80), st.sampled_from([256, 300, 1000, 4095]))
def test_gpt2s_bpe_cut_after_its_first_merges_encodes_every_text_losslessly_in_gpt2s_own_ids(text, merges):
    """No <unk>: the cut is a BPE, so every text round-trips; its ids are below the cut and each is the
    same bytes as GPT-2's token of that id."""
    tokenizer, full = gpt2.Tokenizer(merges=merges), gpt2.gpt2_encoding()
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < merges for i in ids)
    assert all(tokenizer.enc.decode_single_token_bytes(i) == full.decode_single_token_bytes(i) for i in set(ids))
    assert len(ids) >= len(full.encode_ordinary(text))  # the longer merges are spelled with shorter ones


def test_the_readmes_prompt_and_the_plays_names_survive_the_embedded_vocabulary():
    tokenizer = gpt2.Tokenizer(merges=4095)
    for text in ("ROMEO.", "Romeo.", "KING HENRY V", "What, ho! Apothecary!"):
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.meta() == {"kind": "gpt2", "merges": 4095} and tokenizer.eos_id == 4095
    assert gpt2.Tokenizer.from_meta(tokenizer.meta()).vocab_size == 4096


def test_a_checkpoint_of_the_older_compacted_vocabulary_still_decodes_with_unk():
    ids = [gpt2.gpt2_encoding().encode_ordinary(" cat")[0], gpt2.GPT2_EOS]
    tokenizer = gpt2.Tokenizer.from_meta({"kind": "gpt2", "gpt2_ids": sorted(ids)})
    assert tokenizer.decode(tokenizer.encode(" cat dog")) == " cat<unk>"


def test_a_cut_without_the_256_bytes_is_refused():
    with pytest.raises(ValueError, match="keeps 256 to"):
        gpt2.merges_encoding(100)


def test_a_corpus_of_few_documents_holds_out_its_last_five_percent_of_tokens(corpus):
    train, val = (np.asarray(corpus.splits[s]) for s in ("train", "val"))
    eos, total = corpus.tokenizer.eos_id, len(train) + len(val)
    assert len(val) == total - int(total * 0.95)
    assert (train == eos).sum() == 1 and train[-1] != eos  # EOS between the documents; the cut is in the second
    assert val[-1] == eos


def test_batches_are_aligned_blocks_of_the_stream(corpus):
    x = corpus.batch("train", 5, 8, torch.Generator().manual_seed(0))
    stream = np.asarray(corpus.splits["train"])
    assert x.shape == (5, 8)
    for row in x.numpy():
        assert any((stream[i:i + 8] == row).all() for i in range(0, len(stream) - 7, 8))
    with pytest.raises(ValueError):
        corpus.batch("val", 1, 10_000, torch.Generator())


def test_shakespeare_default_is_real_english():
    stream = data.load_data("shakespeare", 4096, 128)
    assert stream.vocab_size == 4096
    assert len(stream.splits["train"]) > 1_000_000
    text = stream.tokenizer.decode(stream.splits["val"][:2000])
    assert "Project Gutenberg" not in text and " the " in text


@given(st.integers(2, 3), st.integers(1, 3), st.integers(0, 1000))
@settings(max_examples=10, deadline=None)
def test_synthetic_log_prob_matches_brute_force_enumeration(vocab, length, seed):
    source = data.MarkovSource(vocab_size=vocab, seq_len=length, branching=2, seed=seed)
    xs = torch.tensor(list(itertools.product(range(vocab), repeat=length)))
    logp = source.log_prob(xs)
    by_hand = torch.tensor([math.log(source.initial[x[0]]) + sum(math.log(source.transition[a, b])
                            if source.transition[a, b] > 0 else -math.inf for a, b in zip(x[:-1], x[1:]))
                            for x in xs.tolist()], dtype=torch.float64)
    assert torch.allclose(logp, by_hand)
    assert math.isclose(logp.exp().sum().item(), 1.0, rel_tol=1e-12)
    p = logp.exp()
    entropy = -(p[p > 0] * logp[p > 0]).sum().item()
    assert math.isclose(source.entropy_rate_bound() * length, entropy, rel_tol=1e-9)


def test_synthetic_samples_follow_the_source():
    """Empirical frequencies of all 27 sequences vs p: each within 5 binomial sigmas."""
    source = data.MarkovSource(vocab_size=3, seq_len=3, branching=2, seed=1)
    n = 50_000
    x = source.sample(n, torch.Generator().manual_seed(0))
    xs = torch.tensor(list(itertools.product(range(3), repeat=3)))
    p = source.log_prob(xs).exp()
    counts = torch.tensor([(x == row).all(-1).sum().item() for row in xs], dtype=torch.float64)
    assert ((counts - n * p).abs() <= 5 * (n * p * (1 - p)).sqrt() + 1e-9).all()


def test_missing_file_is_a_user_error():
    with pytest.raises(ValueError, match="not shakespeare, synthetic, openwebtext or a text file"):
        data.load_data("no/such/file.txt")


def test_openwebtext_without_a_network_is_one_sentence(tmp_path):
    """With `datasets`: the hub's own reason (offline here); without it: what to install."""
    result = run_script("train.py", "--data", "openwebtext", "--iters", "1", "--out-dir", str(tmp_path),
                        env={"HF_HUB_OFFLINE": "1", "MDLM_DATA_DIR": str(tmp_path / "data")})
    line = assert_one_error_line(result)
    assert "openwebtext" in line and ("OfflineModeIsEnabled" in line or "requirements-gpu.txt" in line)


def test_an_edited_text_file_is_prepared_again_and_says_so(tmp_path, monkeypatch, capsys):
    """A prepared corpus is keyed by its files' size, time and SHA-1, not by their paths alone."""
    monkeypatch.setattr(gpt2, "DATA_DIR", tmp_path / "data")
    text = tmp_path / "mine.txt"
    text.write_text("the cat sat on the mat. " * 30)
    first = data.load_data(str(text), 300)
    again = data.load_data(str(text), 300)
    assert capsys.readouterr().out == "" and np.array_equal(first.splits["train"], again.splits["train"])
    text.write_text("a dog lay by the log. " * 30)
    edited = data.load_data(str(text), 300)
    assert "changed since it was prepared" in capsys.readouterr().out
    assert edited.tokenizer.decode(edited.splits["train"]).startswith("a dog lay by the log")
    assert not [p for p in (tmp_path / "data").rglob(".partial-*")]


def test_two_runs_starting_together_on_an_empty_data_folder_both_succeed_and_leave_no_temporary_folder(tmp_path):
    """The first run of the quick start: every tokenizer worker and a second run at once. The downloads
    are copied in when this machine has them, so that only the extraction and preparation race."""
    import os
    import shutil
    import subprocess
    import sys
    from helpers import ROOT
    folder = tmp_path / "data"
    if (gpt2.DATA_DIR / "downloads").is_dir():
        shutil.copytree(gpt2.DATA_DIR / "downloads", folder / "downloads")
    code = "import data; print(len(data.load_data('shakespeare').splits['val']))"
    env = {**os.environ, "MDLM_DATA_DIR": str(folder), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in results]
    assert results[0][0] == results[1][0] and "Traceback" not in results[0][1] + results[1][1]
    leftovers = [p for p in folder.rglob("*") if p.name.startswith((".partial-", "tmp"))]
    assert not leftovers, leftovers
