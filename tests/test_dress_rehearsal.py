"""scripts/dress_rehearsal.py: the paper's path on CPU (hub-layout teacher, local corpus, SDTT and
IDLM steps, sampling, the GPT-2 judge's protocol) runs end to end and reports every stage."""
import pytest

from helpers import run_script

STAGES = ["teacher in the hub's layout", "tiny GPT-2 judge", "local text", "corpus preparation", "SDTT, 2 steps",
          "IDLM, 2 steps", "sampling at 2 steps", "judging"]


def rehearse(work_dir, size, timeout):
    pytest.importorskip("safetensors")
    pytest.importorskip("transformers")
    result = run_script("scripts/dress_rehearsal.py", "--work-dir", str(work_dir), "--size", size, "--text-mb", "1",
                        timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("peak RSS (GB)")[-1]
    assert all(stage in table for stage in STAGES), result.stdout[-2000:]
    assert "GenPPL under the tiny judge" in result.stdout


@pytest.mark.slow
def test_the_rehearsal_runs_every_stage_at_micro_width(tmp_path):
    """L = 1024 and the 50258-token vocabulary, with the `micro` preset's width (90 s on 2 cores)."""
    rehearse(tmp_path, "micro", timeout=600)


@pytest.mark.slow
def test_the_rehearsal_runs_every_stage_at_the_papers_small_size(tmp_path):
    rehearse(tmp_path, "small", timeout=3600)
