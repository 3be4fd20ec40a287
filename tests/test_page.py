"""watching/page.py: the page's data rebuilds every frame of a trace; the page is self-contained; in a real
headless browser (Chromium through Selenium) the slider changes the frame and its end shows the
sampled text; sample.py --trace puts several checkpoints side by side on one seed."""
import json
import math
import re
import shutil

import pytest
import torch

from data import SymbolTokenizer
from diffusion import MaskingProcess
from evaluate import generate
from helpers import L, V, assert_one_error_line, run_script, save_tiny_checkpoint, tiny_model
from samplers import make_sampler
from watching.page import check_writable, page, panel, write
from watching.show import PLACEHOLDER, TokenTexts
from watching.tracing import Traced

SYMBOLS = SymbolTokenizer(V)


def a_trace(steps=5, prompt=(0, None, 1)):
    traced = Traced(make_sampler())
    generate(tiny_model("mdlm"), MaskingProcess(V), 2, L, steps, prompt=list(prompt), sampler=traced,
             generator=torch.Generator().manual_seed(3))
    return traced.trace()


def frame_text(changes, placeholders, k):
    """What the page's script shows at frame k: each position's last change at or before k."""
    texts = [[text for frame, text in position if frame <= k][-1] for position in changes]
    return "".join(placeholders[i] if text is None else text for i, text in enumerate(texts))


def test_the_panel_data_rebuilds_every_frame_of_the_trace():
    trace = a_trace()
    data = panel("teacher", trace, SYMBOLS)
    texts = TokenTexts(SYMBOLS, V)
    assert data["steps"] == 5 and len(data["forwards"]) == 6 and len(data["samples"]) == 2
    for n, changes in enumerate(data["samples"]):
        assert all(len(position) <= 2 for position in changes)  # absorbing: at most one change
        for k, frame in enumerate(trace.frames[:, n].tolist()):
            shown = "".join(text or texts.placeholder(i) for i, text in enumerate(texts(frame)))
            assert frame_text(changes, data["placeholders"], k) == shown
    assert frame_text(data["samples"][0], data["placeholders"], 5) == SYMBOLS.decode(trace.tokens()[0])


def test_the_page_is_self_contained_and_its_data_cannot_close_the_script():
    html = page("a </script> title", [{**panel("</script>", a_trace(), SYMBOLS)}])
    assert not re.search(r"(src|href)\s*=", html) and "http" not in html and "@import" not in html
    assert html.count("</script>") == 2  # the data's own "</" is escaped
    data = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert json.loads(data)["panels"][0]["title"] == "</script>"


class NastyTokenizer(SymbolTokenizer):
    """Tokens that decode to what breaks a page whose data is not escaped with care."""
    NASTY = ["<!--<script>", "</script>", "]]>", "<b>&amp;</b>", "\u2028", "'\"", "</SCRIPT >", "<!--"]

    def __init__(self):
        super().__init__(V)
        self.symbols = list(self.NASTY)


def test_no_text_can_end_the_pages_data_or_open_a_script_state():
    """Every "<" of the data is escaped (as \\u003c), so the data holds no "<" at all, and it reads back."""
    trace = a_trace()
    html = page("<!--<script> title", [panel("</script>", trace, NastyTokenizer())])
    data = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data and html.count("</script>") == 2
    back = json.loads(data)["panels"][0]
    assert back["title"] == "</script>"
    assert frame_text(back["samples"][0], back["placeholders"], back["steps"]) == NastyTokenizer().decode(trace.tokens()[0])


def test_a_trace_path_that_cannot_be_written_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_writable(tmp_path / "missing" / "t.html")
    with pytest.raises(ValueError, match="is a folder"):
        check_writable(tmp_path)
    with pytest.raises(ValueError, match="cannot write the trace"):
        write(tmp_path / "missing" / "t.html", "t", [])


def test_sample_trace_puts_checkpoints_side_by_side_each_with_its_steps(tmp_path):
    teacher = save_tiny_checkpoint(tmp_path / "mdlm.pt")
    student = save_tiny_checkpoint(tmp_path / "round1.pt", "sdtt", sampling_steps=2, round=1,
                                   teacher_sampling_steps=4)
    out = tmp_path / "trace.html"
    result = run_script("sample.py", "--ckpt", str(teacher), str(student), "--num-samples", "2", "--prompt",
                        "a [MASK:2] b", "--trace", str(out), "--jsonl", str(tmp_path / "s.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "2 steps, as it was distilled for (sdtt round 1, its teacher sampled with 4)" in result.stderr
    panels = json.loads(re.search(r'type="application/json">(.*?)</script>', out.read_text(), re.S).group(1))["panels"]
    assert [p["steps"] for p in panels] == [64, 2] and all(len(p["samples"]) == 2 for p in panels)
    records = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    for p, record in zip(panels, records[::2]):
        assert frame_text(p["samples"][0], p["placeholders"], p["steps"]) == record["text"]
    line = assert_one_error_line(run_script("sample.py", "--ckpt", str(teacher), "--trace", str(tmp_path / "no" / "t.html")))
    assert "cannot write the trace" in line


def browser():
    """Headless Chromium driven by Selenium, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -r requirements-dev.txt)")
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_in_a_headless_browser_a_page_of_any_text_works_and_shows_it(tmp_path):
    """Samples holding "<!--<script>", "</script>" and "]]>": the page still runs its script, and at
    the end of the slider it shows exactly the sampled text."""
    from_browser = browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    trace, nasty = a_trace(steps=4), NastyTokenizer()
    path = tmp_path / "nasty.html"
    write(path, "</script><!--<script>", [panel("<!--<script>", trace, nasty)])
    try:
        from_browser.get(path.as_uri())
        from_browser.find_element(By.ID, "slider").send_keys(Keys.END)
        shown = [e.get_attribute("textContent") for e in from_browser.find_elements(By.CLASS_NAME, "sample")]
        assert shown == [nasty.decode(row) for row in trace.tokens()]
        assert from_browser.find_element(By.TAG_NAME, "h2").text == "<!--<script>"
    finally:
        from_browser.quit()


def test_in_a_headless_browser_the_slider_moves_the_frames_and_ends_on_the_sampled_text(tmp_path):
    from_browser = browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    teacher, student = a_trace(steps=8), a_trace(steps=2)
    path = tmp_path / "trace.html"
    write(path, "trace", [panel("teacher", teacher, SYMBOLS), panel("student", student, SYMBOLS)])
    try:
        from_browser.get(path.as_uri())
        slider = from_browser.find_element(By.ID, "slider")

        def shown():
            return ([e.get_attribute("textContent") for e in from_browser.find_elements(By.CLASS_NAME, "sample")],
                    [e.text for e in from_browser.find_elements(By.CLASS_NAME, "status")])
        start, start_status = shown()
        assert start[0] == "a " + " ".join(PLACEHOLDER if i != 2 else "b" for i in range(1, L))
        assert start_status == ["step 0/8 · 0 forward passes per sequence", "step 0/2 · 0 forward passes per sequence"]
        texts = TokenTexts(SYMBOLS, V)
        for position in range(1, 9):  # the slider's steps are the teacher's; the student's frame is rounded
            slider.send_keys(Keys.ARROW_RIGHT)
            expected = [texts(trace.frames[math.floor(position * trace.steps / 8 + 0.5), n].tolist())
                        for trace in (teacher, student) for n in range(2)]
            assert shown()[0] == ["".join(t or texts.placeholder(i) for i, t in enumerate(row)) for row in expected]
        assert shown()[0] != start
        slider.send_keys(Keys.END)
        end, end_status = shown()
        assert end == [SYMBOLS.decode(row) for trace in (teacher, student) for row in trace.tokens()]
        assert [s.split(" · ")[0] for s in end_status] == ["step 8/8", "step 2/2"]
        slider.send_keys(Keys.HOME)
        assert shown()[0] == start
    finally:
        from_browser.quit()
