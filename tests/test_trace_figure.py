"""scripts/trace_figure.py: one row per checkpoint, one column per moment, as a small PNG."""
import importlib.util

from PIL import Image

from helpers import ROOT, assert_one_error_line, run_script, save_tiny_checkpoint


def test_the_figure_has_a_row_per_checkpoint_and_a_column_per_moment(tmp_path):
    teacher = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    student = save_tiny_checkpoint(tmp_path / "round0.pt", "sdtt", sampling_steps=2, round=0, teacher_sampling_steps=4)
    out = tmp_path / "figure.png"
    result = run_script("scripts/trace_figure.py", "--ckpt", str(teacher), str(student), "--steps", "4", "2",
                        "--moments", "3", "--lines", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    spec = importlib.util.spec_from_file_location("trace_figure", ROOT / "scripts" / "trace_figure.py")
    figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure)
    width, height = Image.open(out).size
    assert width == figure.LABEL + 3 * figure.CELL
    assert height == figure.HEADER + 2 * (2 * figure.LINE + figure.PAD)
    line = assert_one_error_line(run_script("scripts/trace_figure.py", "--ckpt", str(teacher), "--labels", "a", "b"))
    assert "one --labels" in line
