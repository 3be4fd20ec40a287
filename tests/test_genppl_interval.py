"""scripts/genppl_interval.py: every row of a samples.jsonl re-scored, with 95% intervals."""
import gzip
import json

import pytest
import torch

import helpers
from data import held_out_data, source_from_meta
from evaluate import ExactJudge
from helpers import SYNTHETIC, assert_one_error_line, run_script


def write_samples(path, rows, checkpoint):
    with (gzip.open if path.suffix == ".gz" else open)(path, "wt") as f:
        for label, tokens in rows.items():
            for index, row in enumerate(tokens.tolist()):
                f.write(json.dumps({"label": label, "steps": 4, "checkpoint": str(checkpoint), "index": index,
                                    "tokens": row}) + "\n")


def test_rows_are_rescored_exactly_and_their_intervals_separate_data_from_noise(tmp_path):
    ckpt = helpers.save_tiny_checkpoint(tmp_path / "model.pt")
    source = source_from_meta(SYNTHETIC)
    data = source.sample(64, torch.Generator().manual_seed(0))
    noise = torch.randint(SYNTHETIC["vocab_size"], data.shape, generator=torch.Generator().manual_seed(1))
    outputs = []
    for name in ("samples.jsonl", "samples.jsonl.gz"):  # as written, or compressed to keep in git
        write_samples(tmp_path / name, {"data": data, "noise": noise}, ckpt)
        result = run_script("scripts/genppl_interval.py", "--samples", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    table = {cells[1].strip(): cells for cells in (line.split("|") for line in outputs[0].splitlines()[2:])}
    bounds = {}
    for label, tokens in (("data", data), ("noise", noise)):
        genppl, (low, high) = float(table[label][4]), map(float, table[label][5].split("-"))
        assert abs(genppl - ExactJudge(source).nll_per_token(tokens).double().mean().exp().item()) < 0.01
        assert low < genppl < high and int(table[label][3]) == 64
        bounds[label] = (low, high)
    assert bounds["data"][1] < bounds["noise"][0]  # the source's own samples beat uniform noise, clearly


def test_without_samples_or_with_an_empty_file_it_is_one_error_line(tmp_path):
    assert "--samples" in assert_one_error_line(run_script("scripts/genppl_interval.py"))
    (tmp_path / "empty.jsonl").write_text("")
    empty = run_script("scripts/genppl_interval.py", "--samples", str(tmp_path / "empty.jsonl"))
    assert "no samples" in assert_one_error_line(empty)


def test_data_windows_add_the_real_texts_row_scored_like_the_samples(tmp_path):
    ckpt = helpers.save_tiny_checkpoint(tmp_path / "model.pt")
    source, shape = source_from_meta(SYNTHETIC), (8, SYNTHETIC["seq_len"])
    noise = torch.randint(SYNTHETIC["vocab_size"], shape, generator=torch.Generator().manual_seed(1))
    write_samples(tmp_path / "samples.jsonl", {"noise": noise}, ckpt)
    result = run_script("scripts/genppl_interval.py", "--samples", str(tmp_path / "samples.jsonl"),
                        "--data-windows", "16")
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[-1].split("|")
    assert row[1].strip() == "data" and int(row[3]) == 16
    windows = source.batch("val", 16, SYNTHETIC["seq_len"], torch.Generator().manual_seed(0))  # as the samples
    assert abs(float(row[4]) - ExactJudge(source).nll_per_token(windows).double().mean().exp().item()) < 0.01


def test_real_text_of_a_checkpoint_that_records_no_data_needs_data():
    with pytest.raises(ValueError, match="give --data"):
        held_out_data(None, {"kind": "gpt2", "gpt2_ids": None}, 50258)
