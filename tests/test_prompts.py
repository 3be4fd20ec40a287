"""plumbing/prompts.py: gap markers become MASK positions at the right places, and an infilled sample
keeps every fixed token, whatever the sampler; malformed markers are clear errors."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from data import SymbolTokenizer, Tokenizer
from evaluate import generate
from helpers import L, V, examples, process_for, seeds, tiny_model
from plumbing.prompts import template
from samplers import SAMPLERS, make_sampler

SYMBOLS = SymbolTokenizer(V)


def test_markers_become_gaps_where_they_are_with_their_counts():
    assert template("a [MASK:3] b c [MASK] d", SYMBOLS.encode, 2, L) == [0, None, None, None, 1, 2, None, None, 3]
    assert template("[MASK:2]a", SYMBOLS.encode, 8, L) == [None, None, 0]
    assert template("a b", SYMBOLS.encode, 8, L) == [0, 1]


def test_the_space_before_a_gap_goes_to_the_gaps_first_token():
    """GPT-2's tokens carry their leading space: 'The [MASK:2] of' is 'The', two gaps, ' of'."""
    tokenizer = Tokenizer()
    assert template("The [MASK:2] of Denmark", tokenizer.encode, 8, 64) == (
        tokenizer.encode("The") + [None, None] + tokenizer.encode(" of Denmark"))


@examples(40)
@given(st.lists(st.tuples(st.lists(st.integers(0, V - 1), max_size=3), st.integers(1, 4)), max_size=4),
       st.lists(st.integers(0, V - 1), max_size=3))
def test_a_template_is_its_pieces_and_gaps_in_order(parts, tail):
    text = " ".join(f"{SYMBOLS.decode(piece)} [MASK:{gap}]" for piece, gap in parts) + " " + SYMBOLS.decode(tail)
    expected = [token for piece, gap in parts for token in piece + [None] * gap] + tail
    assert template(text, SYMBOLS.encode, 8, 64) == expected


@pytest.mark.parametrize("text", ["a [MASK:x] b", "a [MASK:", "[MASK 3]", "a [MASK:-1]", "[MASK:]", "[MASKED]"])
def test_a_malformed_marker_is_a_clear_error(text):
    with pytest.raises(ValueError, match="malformed gap marker"):
        template(text, SYMBOLS.encode, 8, L)


def test_gaps_of_zero_or_longer_than_a_sample_and_prompts_that_leave_nothing_are_errors():
    with pytest.raises(ValueError, match="at least one token"):
        template("a [MASK:0]", SYMBOLS.encode, 8, L)
    with pytest.raises(ValueError, match=f"longer than the {L} tokens"):
        template(f"a [MASK:{L + 1}]", SYMBOLS.encode, 8, L)
    with pytest.raises(ValueError, match="with its gaps"):
        template(f"a b [MASK:{L - 1}]", SYMBOLS.encode, 8, L)
    with pytest.raises(ValueError, match="leave a token"):
        template(" ".join(["a"] * L), SYMBOLS.encode, 8, L)
    assert len(template(f"[MASK:{L}]", SYMBOLS.encode, 8, L)) == L  # all gap: fine


@pytest.mark.parametrize("name", list(SAMPLERS))
@examples(6)
@given(st.lists(st.one_of(st.none(), st.integers(0, V - 1)), min_size=1, max_size=L + 8), seeds)
def test_infilling_never_changes_a_fixed_token_whatever_the_sampler(name, prompt, seed):
    """Fixed tokens anywhere (None: a gap) stay as given, for every sampler; semi-ar makes samples
    past the context, so its fixed tokens may sit in later windows too."""
    seq_len = L + 8 if SAMPLERS[name]("argmax").extends_context else L
    prompt = prompt[:seq_len - 1] if None not in prompt[:seq_len] else prompt[:seq_len]
    tokens, _ = generate(tiny_model("mdlm"), process_for(name, V), 3, seq_len, 4, prompt=prompt,
                         sampler=make_sampler(name), generator=torch.Generator().manual_seed(seed))
    fixed = [i for i, token in enumerate(prompt) if token is not None]
    assert (tokens[:, fixed] == torch.tensor([prompt[i] for i in fixed])).all()
    assert (tokens < V).all()
