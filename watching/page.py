"""A trace of the denoising as one self-contained HTML page (sample.py --trace FILE.html).

Several checkpoints sit side by side (a teacher at many steps, students at few), each a panel
of samples. One slider moves over the sampling time: at slider position p of M (M: the most
steps of any panel), a panel of S steps shows its frame round(p S / M), so all panels are at
the same time t of the reverse process. Each token is coloured by the step that revealed it
(early: blue, late: red), MASK is a grey placeholder, and the tokens of the frame's own step
are outlined. The page holds its data and its script: no network, no external file.

A panel stores, for each position, only the frames where its token changes (once, for an
absorbing process), so a page of 128 steps stays small.
"""
import html
import json
from pathlib import Path

from watching.show import PLACEHOLDER, TokenTexts

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
#controls { position: sticky; top: 0; background: white; padding: .5em 0; }
#slider { width: 60%; vertical-align: middle; }
#panels { display: flex; gap: 1.5em; align-items: flex-start; }
.panel { flex: 1; min-width: 0; }
.panel h2 { font-size: 1em; margin: 0 0 .3em 0; }
.status { color: #555; font-size: .9em; margin-bottom: .5em; }
.sample { font-family: monospace; white-space: pre-wrap; overflow-wrap: anywhere; border-top: 1px solid #ddd; padding: .4em 0; }
.masked { color: #bbb; }
.fixed { font-weight: bold; }
.now { outline: 1px solid #222; }
"""

SCRIPT = """
const data = JSON.parse(document.getElementById("data").textContent);
const slider = document.getElementById("slider");
const longest = Math.max(...data.panels.map(p => p.steps));
slider.max = longest;
const panels = data.panels.map(panel => {
  const box = document.createElement("div");
  box.className = "panel";
  const title = document.createElement("h2");
  title.textContent = panel.title;
  const status = document.createElement("div");
  status.className = "status";
  box.append(title, status);
  const rows = panel.samples.map(sample => {
    const row = document.createElement("div");
    row.className = "sample";
    const spans = sample.map(() => row.appendChild(document.createElement("span")));
    box.appendChild(row);
    return spans;
  });
  document.getElementById("panels").appendChild(box);
  return {panel, status, rows};
});
function colour(frame, steps) {
  const hue = 240 * (1 - (frame - 1) / Math.max(1, steps - 1));
  return `hsl(${hue}, 85%, 85%)`;
}
function show(position) {
  for (const {panel, status, rows} of panels) {
    const k = Math.round(position * panel.steps / longest);
    status.textContent = `step ${k}/${panel.steps} · ${panel.forwards[k]} forward passes per sequence`;
    panel.samples.forEach((sample, n) => sample.forEach((changes, i) => {
      let last = changes[0];
      for (const change of changes) if (change[0] <= k) last = change;
      const [frame, text] = last;
      const span = rows[n][i];
      span.textContent = text === null ? panel.placeholders[i] : text;
      span.className = text === null ? "masked" : frame === 0 ? "fixed" : frame === k ? "now" : "";
      span.style.background = text !== null && frame > 0 ? colour(frame, panel.steps) : "";
    }));
  }
}
slider.addEventListener("input", () => show(Number(slider.value)));
let timer = null;
document.getElementById("play").addEventListener("click", () => {
  if (timer) { clearInterval(timer); timer = null; return; }
  if (Number(slider.value) >= longest) slider.value = 0;
  timer = setInterval(() => {
    slider.value = Number(slider.value) + 1;
    show(Number(slider.value));
    if (Number(slider.value) >= longest) { clearInterval(timer); timer = null; }
  }, Math.max(15, 4000 / longest));
});
show(0);
"""


def panel(title, trace, tokenizer):
    """A checkpoint's trace as the page's data: per sample and position, [frame, text] at each
    frame where its token changes (text null: MASK)."""
    texts = TokenTexts(tokenizer, trace.mask_id)
    frames = trace.frames
    samples = []
    for n in range(frames.shape[1]):
        shown = [texts(frame) for frame in frames[:, n].tolist()]
        changes = [[[0, shown[0][i]]] for i in range(frames.shape[2])]
        for k in range(1, len(shown)):
            for i, text in enumerate(shown[k]):
                if text != changes[i][-1][1]:
                    changes[i].append([k, text])
        samples.append(changes)
    return {"title": title, "steps": trace.steps, "forwards": [round(f, 2) for f in trace.forwards.mean(1).tolist()],
            "placeholders": [texts.placeholder(i) for i in range(frames.shape[2])], "samples": samples}


def page(title, panels):
    """The HTML page of panels (`panel`)."""
    # every "<" as its JSON escape: no text (a sample's "<!--<script>" or "</script>") can end the data or
    # put the parser in a script state; JSON.parse reads "\u003c" back as "<"
    data = json.dumps({"panels": panels}, ensure_ascii=False).replace("<", "\\u003c")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Each token is coloured by the step that revealed it (early: blue, late: red); {PLACEHOLDER} is a
masked position, bold text was given, an outlined token was revealed by the step shown. The slider
moves all panels over the same sampling time.</p>
<div id="controls"><button id="play">play</button> <input type="range" id="slider" min="0" max="1" value="0"></div>
<div id="panels"></div>
<script id="data" type="application/json">{data}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def check_writable(path):
    """One clear error, before any sampling, for a trace path that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write the trace to {path}: it is a folder")
    if not path.parent.is_dir():
        raise ValueError(f"cannot write the trace to {path}: folder {path.parent} does not exist")


def write(path, title, panels):
    try:
        Path(path).write_text(page(title, panels), encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot write the trace to {path}: {e.strerror}") from None
