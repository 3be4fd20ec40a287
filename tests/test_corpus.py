"""corpora/corpus.py: MDLM's split (the last documents held out, EOS after every document), parallel
tokenization identical to serial, ids streamed in the narrowest dtype, and an atomic build."""
import json

import numpy as np
import pytest

import data
from corpora import corpus, gpt2


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(gpt2, "DATA_DIR", tmp_path / "data")
    return tmp_path / "data"


def documents(n):
    return [f"Document {i} says: " + "lorem ipsum dolor " * (i % 7 + 1) for i in range(n)]


def encoded(texts):
    enc = gpt2.gpt2_encoding()
    return np.array([i for text in texts for i in enc.encode_ordinary(text) + [data.GPT2_EOS]])


def test_the_last_documents_are_validation_and_every_document_ends_with_eos(data_dir, monkeypatch):
    monkeypatch.setattr(corpus, "VAL_DOCUMENTS", 3)  # MDLM's 100k, scaled to a 100-document corpus
    docs = documents(100)
    stream = data.TokenStream(corpus.prepare_corpus("docs", docs, 50257, num_proc=1))
    assert np.array_equal(stream.splits["train"], encoded(docs[:97]))
    assert np.array_equal(stream.splits["val"], encoded(docs[97:]))
    small = data.TokenStream(corpus.prepare_corpus("small", docs[:40], 50257, num_proc=1))
    assert np.array_equal(small.splits["val"], encoded(docs[38:40]))  # 5% of the documents


def test_parallel_tokenization_writes_the_same_stream_as_one_process(data_dir, monkeypatch):
    monkeypatch.setattr(corpus, "BATCH_CHARS", 200)  # many batches, so the workers interleave
    docs = documents(60)
    one, two = (data.TokenStream(corpus.prepare_corpus(f"p{n}", docs, 50257, num_proc=n)) for n in (1, 2))
    for split in ("train", "val"):
        assert np.array_equal(one.splits[split], two.splits[split])
    assert one.splits["train"].dtype == np.uint16


def test_ids_take_the_narrowest_unsigned_type():
    assert corpus.dtype_for(50257) == np.uint16 and corpus.dtype_for(65536) == np.uint16
    assert corpus.dtype_for(65537) == np.uint32 and corpus.dtype_for(151_936) == np.uint32


def test_a_small_vocabulary_is_gpt2s_bpe_cut_after_its_first_tokens_and_eos_follows_them(data_dir):
    docs = [" alpha beta" * 50] * 30 + [" zebra" * 100]
    stream = data.TokenStream(corpus.prepare_corpus("cut", docs, 300, num_proc=1))
    tokenizer, cut = stream.tokenizer, gpt2.merges_encoding(299)
    assert stream.meta() == {"kind": "gpt2", "merges": 299} and (tokenizer.vocab_size, tokenizer.eos_id) == (300, 299)
    everything = np.concatenate([stream.splits["train"], stream.splits["val"]])
    expected = [i for d in docs for i in cut.encode_ordinary(d) + [299]]
    assert np.array_equal(everything, expected) and everything.max() == 299
    assert tokenizer.decode(stream.splits["val"]).replace("<|endoftext|>", "") == " zebra" * 100


def test_a_failed_build_leaves_neither_the_corpus_nor_a_partial_folder(data_dir):
    def failing():
        yield "one document"
        raise OSError("disk full")
    with pytest.raises(OSError):
        corpus.prepare_corpus("broken", failing(), 50257, num_proc=1)
    assert list((data_dir / "broken").iterdir()) == []


def test_jsonl_files_hold_one_document_a_line(tmp_path, data_dir):
    path = tmp_path / "corpus.jsonl"
    docs = documents(25)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    stream = data.load_data(str(path), 50257)
    assert np.array_equal(np.concatenate([stream.splits["train"], stream.splits["val"]]), encoded(docs))
    assert np.array_equal(stream.splits["val"], encoded(docs[24:]))


def test_openwebtext_is_loaded_by_its_current_hub_id_with_processes_and_its_error_is_shown(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        raise ConnectionError("Couldn't reach 'Skylion007/openwebtext' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(ValueError) as error:
        corpus.openwebtext_texts(num_proc=3)
    assert calls == [("Skylion007/openwebtext", {"split": "train", "num_proc": 3})]
    assert "ConnectionError: Couldn't reach 'Skylion007/openwebtext'" in str(error.value)


def test_the_first_release_split_holds_out_the_tail_of_every_document(data_dir):
    docs = documents(30)
    stream = data.TokenStream(corpus.prepare_corpus("tails", docs, 50257, num_proc=1, split="tails"))
    ids = [encoded([d]) for d in docs]
    cuts = [int(len(row) * (1 - corpus.VAL_FRACTION)) for row in ids]
    assert np.array_equal(stream.splits["train"], np.concatenate([row[:c] for row, c in zip(ids, cuts)]))
    assert np.array_equal(stream.splits["val"], np.concatenate([row[c:] for row, c in zip(ids, cuts)]))


def test_the_first_release_split_draws_windows_at_any_offset(data_dir):
    import torch
    stream = data.TokenStream(corpus.prepare_corpus("w", documents(30), 50257, num_proc=1, split="tails"))
    train, g = np.asarray(stream.splits["train"]), torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(train) - 8, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    assert any(s % 8 for s in starts)  # the draws this test checks include unaligned ones
    assert np.array_equal(stream.batch("train", 64, 8, g).numpy(), np.stack([train[s:s + 8] for s in starts]))


def test_an_unknown_split_is_one_error(data_dir):
    with pytest.raises(ValueError, match="unknown corpus split"):
        corpus.prepare_corpus("x", documents(3), 50257, num_proc=1, split="middle")
