"""Tests of evaluate.py: exact GenPPL, entropy and self-BLEU invariants, the one-pass LAMBADA
protocol."""
import collections
import importlib.util
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import evaluate
from data import GPT2_EOS, MarkovSource, Tokenizer
from diffusion import Cosine, LogLinear, MaskingProcess, antithetic_times
from helpers import L, SYNTHETIC, V, random_dit, save_tiny_checkpoint, tiny_gpt2_folder, tiny_model
token_rows = st.lists(st.integers(0, 50), min_size=1, max_size=40)


# ----------------------------------------------------------------------------- GenPPL

def test_exact_genppl_of_source_samples_matches_entropy_rate():
    """For x ~ p, E[-log p(x) / L] = H(p) / L: within 5 standard errors of the sample mean."""
    source = MarkovSource(vocab_size=16, seq_len=32, branching=3, seed=0)
    nll = evaluate.ExactJudge(source).nll_per_token(source.sample(4000, torch.Generator().manual_seed(0)))
    standard_error = nll.std().item() / math.sqrt(len(nll))
    assert abs(nll.mean().item() - source.entropy_rate_bound()) < 5 * standard_error


def test_ar_judge_scores_tokens_after_bos_and_batching_does_not_matter():
    model = tiny_model("ar")
    tokens = torch.randint(0, V, (5, L), generator=torch.Generator().manual_seed(0))
    by_one = evaluate.ARJudge(model, bos_id=0, batch_size=1).nll_per_token(tokens)
    logits = model(torch.cat([torch.zeros(5, 1, dtype=torch.long), tokens[:, :-1]], dim=1))
    expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens, reduction="none").mean(1)
    torch.testing.assert_close(evaluate.ARJudge(model, bos_id=0, batch_size=4).nll_per_token(tokens), by_one)
    torch.testing.assert_close(by_one, expected.detach())


def test_quality_rows_sample_with_the_same_seed_and_count_forward_passes():
    model = tiny_model()
    judge = evaluate.ExactJudge(MarkovSource(V, L, 3, 0))
    process = MaskingProcess(V)
    entries = [("a", model, process, 4), ("b", model, process, 4), ("c", model, process, 64)]
    rows = evaluate.quality_rows(entries, judge, num_samples=3, batch_size=1, seq_len=L, seed=0, device="cpu")
    assert set(rows[0]) == {"label", "steps", "genppl", "entropy", "nfe", "seconds"}
    assert rows[0]["genppl"] == rows[1]["genppl"] and rows[0]["entropy"] == rows[1]["entropy"]
    # NFE per sequence: one forward per step that reveals one of its tokens, plus the final fill
    assert 1 <= rows[0]["nfe"] <= 4 + 1 and rows[2]["nfe"] <= L + 1
    assert all(0 < row["entropy"] <= math.log(L) for row in rows)


def test_ar_generation_is_one_forward_pass_per_token_after_bos():
    tokens, nfe = evaluate.generate(tiny_model("ar"), None, 3, L - 1, steps=1, bos_id=0, batch_size=2,
                                    generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (3, L - 1) and nfe == L - 1


def test_load_judge_refuses_mismatched_vocabularies(tmp_path):
    judge_path = save_tiny_checkpoint(tmp_path / "ar.pt", "ar", {**SYNTHETIC, "vocab_size": V + 1})
    with pytest.raises(ValueError, match="different tokenizer/vocabulary"):
        evaluate.load_judge(str(judge_path), SYNTHETIC, "cpu")
    with pytest.raises(ValueError, match="synthetic"):
        evaluate.load_judge("exact", {"kind": "gpt2", "gpt2_ids": None}, "cpu")


# ----------------------------------------------------------------------------- entropy and self-BLEU

def test_judged_positions_are_the_real_tokens_and_the_first_eos_after_the_first_token():
    E = 9
    ids = torch.tensor([[1, E, 2, E, E], [E, 3, 4, E, 5], [1, 2, 3, 4, 5]])
    assert evaluate.judged_positions(ids, E).tolist() == [[True, True, False, False],
                                                          [True, True, False, True],
                                                          [True, True, True, True]]


@pytest.fixture(scope="module")
def gpt2_judge(tmp_path_factory):
    folder = tiny_gpt2_folder(tmp_path_factory.mktemp("gpt2"), context=32)
    return evaluate.load_judge(str(folder), {"kind": "gpt2", "gpt2_ids": None}, "cpu")


def our_samples():
    """GPT-2 token samples whose texts re-tokenize to different lengths, some with an EOS inside,
    and one longer than the judge's context of 32 (scored in two chunks)."""
    encode = Tokenizer().encode
    texts = ["The cat sat on the mat and looked at the door for a long while, then slept.",
             "Numbers 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30",
             "Short.", "A line\n\nthen another one", "x y z"]
    rows = [encode(text)[:40] for text in texts]
    rows[2] = rows[2] + [GPT2_EOS] + encode(" After the end.")
    return torch.tensor([(row + [GPT2_EOS] * 40)[:40] for row in rows])


def test_hf_judge_batched_and_one_by_one_nll_agree(gpt2_judge):
    tokens = our_samples()
    gpt2_judge.batch_size = len(tokens)
    batched = gpt2_judge.nll_per_token(tokens)
    gpt2_judge.batch_size = 1
    one_by_one = gpt2_judge.nll_per_token(tokens)
    assert torch.isfinite(batched).all()
    assert torch.allclose(batched, one_by_one, atol=1e-4, rtol=0)


def test_hf_judge_scores_without_bos_the_real_tokens_and_the_first_eos(gpt2_judge):
    """One sample scored by hand: the judge's own tokens, no BOS, every next-token prediction
    from the second token on, of which the first EOS counts and the padding after it does not."""
    tokens = our_samples()[2:3, :20]  # fits the judge's context: one chunk
    text = Tokenizer().decode(tokens[0])
    ids = gpt2_judge.hf_tokenizer(text, return_tensors="pt")["input_ids"][:, :20]
    first_eos = (ids[0] == GPT2_EOS).nonzero()[0].item()
    assert ids[0, 0] != GPT2_EOS and first_eos < ids.shape[1] - 1
    with torch.no_grad():
        logits = gpt2_judge.model(ids).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    keep = torch.tensor([i + 1 <= first_eos or ids[0, i + 1] != GPT2_EOS for i in range(ids.shape[1] - 1)])
    expected = nll[keep].mean()
    assert torch.allclose(gpt2_judge.nll_per_token(tokens)[0].float(), expected, atol=1e-5)


def test_a_judge_that_cannot_be_loaded_is_one_clear_error(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="could not load judge"):
        evaluate.load_judge(str(tmp_path / "empty"), {"kind": "gpt2", "gpt2_ids": None}, "cpu")


def test_entropy_of_constant_sample_is_zero_and_of_all_distinct_tokens_is_log_length():
    assert evaluate.token_entropy(torch.full((1, L), 3)).item() == 0
    assert evaluate.token_entropy(torch.randperm(L)[None]).item() == pytest.approx(math.log(L))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(token_rows, st.randoms(use_true_random=False))
def test_entropy_is_between_zero_and_log_length_and_permutation_invariant(row, rng):
    entropy = evaluate.token_entropy(torch.tensor([row])).item()
    shuffled = row[:]
    rng.shuffle(shuffled)
    assert -1e-12 <= entropy <= math.log(len(row)) + 1e-12
    assert evaluate.token_entropy(torch.tensor([shuffled])).item() == pytest.approx(entropy)


needs_sacrebleu = pytest.mark.skipif(importlib.util.find_spec("sacrebleu") is None,
                                     reason="needs the extras of requirements-eval.txt")


def texygen_bleu(hypothesis, references, max_n=4):
    """The hand-written sentence BLEU that evaluate.self_bleu used before sacrebleu (the reference
    of the agreement tests): brevity penalty times the geometric mean of the clipped n-gram
    precisions, orders longer than the hypothesis skipped, a zero match count taken as 0.1.
    With one change: no matching token at all gives 0 (sacrebleu's rule, and NLTK's, which
    Texygen calls); the hand-written one gave 0.1^(orders) there."""
    def ngrams(tokens, n):
        return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    orders = range(1, min(max_n, len(hypothesis)) + 1)
    log_precision = 0.0
    for n in orders:
        counts, clip = ngrams(hypothesis, n), collections.Counter()
        for reference in references:
            clip |= ngrams(reference, n)
        matches = sum((counts & clip).values())
        if n == 1 and matches == 0:
            return 0.0
        log_precision += math.log(max(matches, 0.1) / sum(counts.values())) / len(orders)
    closest = min(references, key=lambda r: (abs(len(r) - len(hypothesis)), len(r)))
    return min(1.0, math.exp(1 - len(closest) / len(hypothesis))) * math.exp(log_precision)


def texygen_self_bleu(continuations):
    return sum(texygen_bleu(c, continuations[:i] + continuations[i + 1:])
               for i, c in enumerate(continuations)) / len(continuations)


@needs_sacrebleu
def test_self_bleu_from_sacrebleu_agrees_with_the_hand_written_one_on_a_fixed_set():
    """Five continuations of 50 tokens over 12 ids (so that n-grams repeat), as SDTT scores them."""
    continuations = torch.randint(0, 12, (5, 50), generator=torch.Generator().manual_seed(0)).tolist()
    continuations[1][:20] = continuations[0][:20]  # some shared 4-grams
    assert evaluate.self_bleu(continuations) == pytest.approx(texygen_self_bleu(continuations), rel=1e-9)


@needs_sacrebleu
@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(token_rows, min_size=2, max_size=5))
def test_self_bleu_from_sacrebleu_agrees_with_the_hand_written_one(continuations):
    assert evaluate.self_bleu(continuations) == pytest.approx(texygen_self_bleu(continuations), rel=1e-9)


@needs_sacrebleu
@settings(max_examples=50, deadline=None, derandomize=True)
@given(token_rows, st.integers(2, 5))
def test_self_bleu_of_identical_continuations_is_one(row, copies):
    assert evaluate.self_bleu([row] * copies) == pytest.approx(1.0)


@needs_sacrebleu
@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.lists(token_rows, min_size=2, max_size=5))
def test_self_bleu_is_between_zero_and_one(continuations):
    assert 0 <= evaluate.self_bleu(continuations) <= 1 + 1e-12


@needs_sacrebleu
def test_self_bleu_brevity_penalty_and_disjoint_continuations():
    """[0..3] is a prefix of [0..7]: all its n-grams match, but it is half as long (brevity
    penalty exp(1 - 8/4)); [0..7]'s n-gram precisions against [0..3] are 4/8, 3/7, 2/6, 1/5."""
    longer = math.exp((math.log(4 / 8) + math.log(3 / 7) + math.log(2 / 6) + math.log(1 / 5)) / 4)
    assert evaluate.self_bleu([[0, 1, 2, 3], list(range(8))]) == pytest.approx((math.exp(1 - 8 / 4) + longer) / 2)
    assert evaluate.self_bleu([[0, 1, 2, 3], [4, 5, 6, 7]]) == 0


@needs_sacrebleu
def test_self_bleu_differs_from_the_hand_written_one_only_without_any_shared_token():
    """Unigram precision 1/2, bigram 0 matches floored to 0.1/1: both agree. No shared token:
    sacrebleu gives 0, the hand-written one gave the floors' geometric mean sqrt(0.1/2 * 0.1/1)."""
    assert evaluate.self_bleu([[0, 1], [1, 2]]) == pytest.approx(math.sqrt(1 / 2 * 0.1 / 1))
    assert evaluate.self_bleu([[0, 1], [2, 3]]) == 0


# ----------------------------------------------------------------------------- LAMBADA

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
    result = evaluate.lambada(model, MaskingProcess(V), examples, CharTokenizer(), "cpu", nelbo_samples=4)
    decoding = [z for z in model.calls if z.shape[0] == 1]
    assert result["n"] == result["forward_passes"] == len(examples) == len(decoding)
    assert len(model.calls) == 2 * len(examples)  # plus one batched NELBO estimate per example
    for z, text in zip(decoding, examples):
        word = len(text.rsplit(maxsplit=1)[1]) + 1  # the space belongs to the word, as in GPT-2
        assert (z[0, -word:] == V).all() and (z[0, :-word] != V).all() and z.shape[1] <= L
    assert 0 <= result["accuracy"] <= 1 and 1 < result["ppl_bound"] < math.inf


def nelbo_inputs(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, L), generator=g)
    return x, antithetic_times(torch.rand((), generator=g).item(), n), torch.rand(x.shape, generator=g)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), time_conditioned=st.booleans())
def test_masked_nelbo_equals_the_full_nelbo(seed, time_conditioned):
    model = random_dit(seed, V, L)
    process = MaskingProcess(V, Cosine(1e-3) if time_conditioned else LogLinear(), time_conditioned)
    x, t, u = nelbo_inputs(seed)
    with torch.no_grad():
        full, masked = process.loss(model, x, t, u), evaluate.masked_nelbo(model, process, x, t, u)
    assert torch.allclose(masked, full, rtol=1e-5, atol=1e-6)


def test_micro_batched_validation_equals_one_pass():
    model, process = random_dit(0, V, L), MaskingProcess(V, LogLinear())
    batches = [nelbo_inputs(seed, n=6) for seed in range(2)]
    whole = evaluate.validation_loss(model, process, batches)
    assert evaluate.validation_loss(model, process, batches, micro_batch=4) == pytest.approx(whole, rel=1e-6)
    assert evaluate.validation_loss(model, process, batches, micro_batch=1) == pytest.approx(whole, rel=1e-6)


def test_fp16_autocast_losses_stay_finite_even_with_huge_logits():
    """Logits of order 3e4 (fp16 holds up to 65504): SUBS's masking, in float32, yields no NaN."""
    model, process = random_dit(0, V, L), MaskingProcess(V, LogLinear())
    x, t, u = nelbo_inputs(0)
    with torch.no_grad():
        largest = model(process.forward_sample(x, t, u), torch.zeros(len(x))).abs().max()
        model.output_layer.linear.weight.mul_(3e4 / largest)
        model.output_layer.linear.bias.mul_(3e4 / largest)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        assert model(process.prior(1, L, "cpu"), torch.zeros(1)).dtype == torch.float16
        losses = process.loss(model, x, t, u), evaluate.masked_nelbo(model, process, x, t, u)
    assert all(torch.isfinite(loss) for loss in losses)
