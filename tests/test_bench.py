"""bench.py's bookkeeping on the micro preset: what is counted, not how fast it runs."""
import json
import math

import pytest
import torch

import bench
from plumbing.flops import lower_bounds

CPU = torch.device("cpu")



def micro_config():
    cfg = bench.BenchConfig(sizes=["micro"], vocab_size=64, seq_len=16, batch_sizes=[2], steps=[2, 4], runs=2,
                            train_runs=1, cache_steps=64, cache_seq_len=8, cache_batch_sizes=[1], kv_batch_size=1)
    return bench.resolve(cfg, CPU)


def test_resolve_fills_only_the_flags_left_empty():
    cfg = bench.resolve(bench.BenchConfig(steps=[7]), CPU)
    assert cfg.steps == [7]
    assert (cfg.sizes, cfg.seq_len, cfg.vocab_size, cfg.gpu) == (["mini"], 256, 4096, "a100")
    with pytest.raises(ValueError):
        bench.resolve(bench.BenchConfig(only="latency,nonsense"), CPU)
    with pytest.raises(ValueError):
        bench.resolve(bench.BenchConfig(steps=[0]), CPU)


def test_timed_counts_runs_and_keeps_results():
    calls = []
    stats, results = bench.timed(lambda: calls.append(1) or len(calls), 3, CPU, warmup=lambda: calls.append(0))
    assert calls == [0, 1, 1, 1] and results == [2, 3, 4]
    assert stats["runs"] == 3 and 0 <= stats["min_s"] <= stats["median_s"]


def test_latency_rows_hold_every_size_batch_step_count_and_sampler():
    cfg = micro_config()
    rows = bench.latency(cfg, CPU, {})
    assert [(r["size"], r["batch"]) for r in rows] == [("micro", 2)]
    row = rows[0]
    assert row["ar"]["runs"] == 2 and set(row["diffusion"]) == {2, 4}
    for k, by_sampler in row["diffusion"].items():
        assert set(by_sampler) == {"plain", "default", "speedup", "flop_ratio"} and by_sampler["flop_ratio"] >= 1
        # k passes, plus one when a MASK survives to the end; the default sampler never does more
        assert k <= by_sampler["plain"]["forward_passes"] <= k + 1
        assert by_sampler["default"]["forward_passes"] <= by_sampler["plain"]["forward_passes"]


def test_sampler_overhead_reuses_the_latency_figure(monkeypatch):
    monkeypatch.setattr(bench, "matmul_peak_flops", lambda device: 1e9)
    cfg = micro_config()
    results = {"latency": bench.latency(cfg, CPU, {})}
    out = bench.overhead(cfg, CPU, results)
    assert out["sampling"] is results["latency"][0]["diffusion"][2]["plain"]
    assert math.isclose(out["ratio"], out["sampling"]["median_s"]
                        / (out["sampling"]["forward_passes"] * out["forward"]["median_s"]))


def test_work_counts_fewer_sequence_forwards_per_sequence_near_their_expectation():
    cfg = bench.resolve(bench.BenchConfig(cache_steps=256, cache_seq_len=256, cache_batch_sizes=[1, 8]), CPU)
    rows = bench.work(cfg, CPU, {})
    for row in rows:
        for cache in ("batch", "sequence"):
            # per-sequence counts are sums of independent per-step events: sd below sqrt(256) / 2 = 8
            assert abs(row[cache]["measured"] - row[cache]["expected"]) < 40
        assert row["sequence"]["measured"] <= row["batch"]["measured"]
    assert rows[0]["fewer"] == 1.0 and rows[1]["fewer"] > 1.3


def test_compile_section_reports_gain_and_compile_time(monkeypatch):
    monkeypatch.setattr(bench.devices, "compile_blocks", lambda model: model)  # the bookkeeping, not the compiler
    row = bench.compile_gain(micro_config(), CPU, {})[0]
    assert row["gain"] == pytest.approx(row["eager"]["median_s"] / row["compiled"]["median_s"])
    assert (row["size"], row["batch"], row["steps"]) == ("micro", 2, 2)


def test_roofline_puts_ar_on_the_memory_bound_and_scales_diffusion_with_steps():
    with torch.device("meta"):
        gpt, dit = (bench.untrained(kind, "small", 50257, 1024, "meta") for kind in ("ar", "mdlm"))
    bound = lower_bounds(dit, gpt, 8, 1024, [16, 32], "a100")
    peak, bandwidth = bench.GPUS["a100"]
    weights_per_token = 2 * bench.count_params(gpt, non_embedding=True) / bandwidth
    assert bound["ar_s"] >= 1024 * weights_per_token
    assert bound["diffusion_s"][32] == pytest.approx(2 * bound["diffusion_s"][16])
    assert bound["diffusion_s"][16] >= 16 * bench.forward_flops(dit, 8, 1024) / peak


def test_kv_reports_both_runs():
    row = bench.kv(micro_config(), CPU, {})
    assert row["speedup"] == pytest.approx(row["uncached_s"] / row["cached_s"])


@pytest.mark.parametrize("method", ["mdlm", "sdtt", "idlm"])
def test_train_step_cost_steps_every_phase(method):
    out = bench.train_step_cost(method, "micro", 64, 16, 2, 1, "cpu")
    assert out["method"] == method and out["runs"] == 1 and out["peak_bytes"] >= 0
    assert bench.training_step(method, "micro", 64, 16, 2, CPU)[1] == (2 if method == "idlm" else 1)


def test_main_writes_the_json(tmp_path, capsys):
    path = tmp_path / "sub" / "bench.json"
    bench.main(["--only", "latency,roofline", "--sizes", "micro", "--vocab-size", "64", "--seq-len", "16",
                "--batch-sizes", "2", "--steps", "2", "--runs", "1", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert set(saved["results"]) == {"latency", "roofline"}
    assert "| micro |" in capsys.readouterr().out
    bench.main(["--only", "roofline", "--sizes", "micro", "--vocab-size", "64", "--seq-len", "32",
                "--batch-sizes", "2", "--steps", "2", "--runs", "1", "--json", str(path)])
    rerun = json.loads(path.read_text())
    assert rerun["results"]["latency"] == saved["results"]["latency"]  # a partial rerun keeps the rest
    assert rerun["configs"]["roofline"]["seq_len"] == 32 and rerun["configs"]["latency"]["seq_len"] == 16


def test_sampling_flops_of_the_plain_sampler_are_whole_forwards_and_the_head_is_counted_per_row():
    dit = bench.untrained("mdlm", "micro", 64, 16, CPU)
    assert bench.sampling_flops(dit, 16, 5) == pytest.approx(5 * bench.forward_flops(dit, 1, 16))
    head_row = 2 * dit.output_layer.linear.weight.numel()
    assert (bench.sampling_flops(dit, 16, 5) - bench.sampling_flops(dit, 16, 5, 16)) == pytest.approx(head_row * 4 * 16)
