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


def test_a_student_is_judged_at_its_own_entropy_and_idlm_against_sdtt_on_the_frontier():
    lines = claims(sdtt={4: (3.0, 1.9), 2: (5.0, 1.9)}, idlm={4: (2.0, 1.85), 2: (4.0, 2.0)})
    # SDTT: 3.0 at entropy 1.9 where the teacher's frontier says 2.5: worse
    assert "SDTT at L/16 = 4 steps: GenPPL 3.00" in lines[2] and "95.0% of the teacher's" in lines[2]
    assert lines[2].endswith("at equal entropy: **worse** (the teacher's frontier there: 2.50)")
    # IDLM: 2.0 at entropy 1.85 where the frontier says sqrt(2 x 2.5) = 2.24: better
    assert lines[3].endswith("at equal entropy: **better** (the teacher's frontier there: 2.24)")
    # at 4 steps IDLM is 2.0 / 2.24 of the frontier, SDTT 3.0 / 2.5: IDLM better; at 2 steps IDLM 4.0 at 2.0
    # (the frontier: 3.0) against SDTT 5.0 at 1.9 (2.5): 1.33 against 2.0 of the frontier, better
    assert lines[4].startswith("- IDLM vs SDTT at 4 steps: GenPPL 2.00 vs 3.00 at entropy 1.85 vs 1.90 -> IDLM at "
                               "equal entropy: **better**")
    assert "-> IDLM at equal entropy: **better**" in lines[5]
    assert "GenPPL 9.00 at L/16 = 4 steps and 2.80 at L" in lines[6] and lines[6].endswith("3.0x")
    assert lines[7] == "- LAMBADA-style one-pass suffix accuracy: teacher 0.500, SDTT (last round) 0.500, IDLM 0.500, exact denoiser 0.500"


def test_a_lower_genppl_bought_with_entropy_is_not_better_at_equal_entropy():
    """IDLM's GenPPL is lower than SDTT's but only because its entropy is lower: on the frontier, whose
    slope is log(1.5) per 0.1 nat, both sit exactly on the curve, so IDLM is equal, not better."""
    lines = claims(sdtt={4: (3.0, 2.0), 2: (3.0, 2.0)}, idlm={4: (2.0, 1.8), 2: (2.0, 1.8)})
    assert "at 4 steps: GenPPL 2.00 vs 3.00 at entropy 1.80 vs 2.00 -> IDLM at equal entropy: **equal**" in lines[4]


def test_a_student_outside_the_frontiers_entropies_gets_no_verdict():
    lines = claims(sdtt={4: (1.5, 1.5), 2: (5.0, 2.0)}, idlm={4: (3.2, 2.0), 2: (4.0, 2.0)})
    assert "at equal entropy: **no verdict: entropy 1.500-1.500 leaves the frontier's 1.800-2.000**" in lines[2]
    assert "at equal entropy: **worse**" in lines[3]
    assert "at 4 steps: GenPPL 3.20 vs 1.50 at entropy 2.00 vs 1.50 -> IDLM at equal entropy: **no verdict" in lines[4]
