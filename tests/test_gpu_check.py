"""scripts/gpu_check.py: documented, and on a machine without a CUDA GPU it stops with one line."""
import pytest
import torch

from helpers import assert_one_error_line, run_script


def test_help_documents_the_checks():
    result = run_script("scripts/gpu_check.py", "--help")
    assert result.returncode == 0 and "--quick" in result.stdout and "GPU" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run the script itself")
def test_without_a_gpu_it_stops_with_one_line():
    assert "needs a CUDA GPU" in assert_one_error_line(run_script("scripts/gpu_check.py", "--quick"))
