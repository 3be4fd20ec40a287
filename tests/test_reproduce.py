"""evaluation/reproduce.py: the claims' targets, checked on sweep rows, each student judged at equal
entropy on the teacher's frontier (the earlier rule beside it)."""
import math

from evaluation import reproduce

LABELS = {"teacher": "t.pt", "sdtt": "sdtt/round*.pt", "sdtt_final": "sdtt/round4.pt", "idlm": "i.pt",
          "exact": "exact"}


def row(label, steps, genppl, entropy, half=0.02):
    """A sweep row as evaluation.frontier.read_sweep gives it, with a 95% interval of +-half in log GenPPL."""
    return {"label": label, "steps": float(steps), "genppl": genppl, "entropy": entropy,
            "genppl_low": genppl * math.exp(-half), "genppl_high": genppl * math.exp(half)}


def rows(table):
    """Sweep rows from {label: {steps: (genppl, entropy)}}."""
    return [row(label, steps, g, e) for label, by_steps in table.items() for steps, (g, e) in by_steps.items()]


# the teacher at L over temperatures: GenPPL 2 at entropy 1.8 up to 3 at entropy 2.0
FRONTIER = [row("t.pt", 64, 2.0, 1.8), row("t.pt", 64, 2.5, 1.9), row("t.pt", 64, 3.0, 2.0)]


def claims(sdtt, idlm):
    # the last round's student at every step count: the claims must use each round at its own steps
    final = {4: (1.0, 2.0), 2: (1.0, 2.0)}
    sweep = rows({"t.pt": {64: (3.0, 2.0)}, "sdtt/round*.pt": sdtt, "sdtt/round4.pt": final, "i.pt": idlm,
                  "exact": {64: (2.8, 2.0), 4: (9.0, 2.0)}})
    lambada = [{"label": label, "accuracy": 0.5} for name, label in LABELS.items() if name != "sdtt"]
    return reproduce.check_claims("synthetic", sweep, lambada, LABELS, 64, FRONTIER)


def test_a_student_is_judged_at_its_own_entropy_and_by_the_earlier_rule_beside_it():
    lines = claims(sdtt={4: (3.0, 1.9), 2: (5.0, 1.9)}, idlm={4: (2.0, 1.85), 2: (4.0, 2.0)})
    # SDTT: 3.0 at entropy 1.9 where the teacher's frontier says 2.5: worse, though the earlier rule passed it
    assert "SDTT at L/16 = 4 steps: GenPPL 3.00" in lines[2] and "entropy 1.90 (95.0% of the teacher's)" in lines[2]
    assert "at equal entropy: **worse** (the teacher's frontier there: 2.50)" in lines[2]
    assert lines[2].endswith("by the earlier rule (GenPPL <= teacher at L, entropy >= 95%): reproduced")
    # IDLM: 2.0 at entropy 1.85 where the frontier says sqrt(2 x 2.5) = 2.24: better, the earlier rule failed it
    assert "at equal entropy: **better** (the teacher's frontier there: 2.24)" in lines[3]
    assert lines[3].endswith("NOT reproduced")
    assert lines[4].startswith("- IDLM vs SDTT at 4 steps: GenPPL 2.00 vs 3.00 -> reproduced")
    assert lines[5].startswith("- IDLM vs SDTT at 2 steps: GenPPL 4.00 vs 5.00 -> reproduced")
    assert "GenPPL 9.00 at L/16 = 4 steps and 2.80 at L" in lines[6] and lines[6].endswith("3.0x")
    assert lines[7] == "- LAMBADA-style one-pass suffix accuracy: teacher 0.500, SDTT (last round) 0.500, IDLM 0.500, exact denoiser 0.500"


def test_a_student_outside_the_frontiers_entropies_gets_no_verdict():
    lines = claims(sdtt={4: (1.5, 1.5), 2: (5.0, 2.0)}, idlm={4: (3.2, 2.0), 2: (4.0, 2.0)})
    assert "at equal entropy: **no verdict: entropy 1.500 outside the frontier's 1.800-2.000**" in lines[2]
    assert "at equal entropy: **worse**" in lines[3]
    assert "at 4 steps: GenPPL 3.20 vs 1.50 -> NOT reproduced" in lines[4]
