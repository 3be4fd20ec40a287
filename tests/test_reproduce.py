"""evaluation/reproduce.py: the claims' targets, checked on sweep rows."""
from evaluation import reproduce

LABELS = {"teacher": "t.pt", "sdtt": "sdtt/round*.pt", "sdtt_final": "sdtt/round4.pt", "idlm": "i.pt",
          "exact": "exact"}


def rows(table):
    """Sweep rows from {label: {steps: (genppl, entropy)}}, as csv.DictReader gives them."""
    return [{"label": label, "steps": str(steps), "genppl": str(g), "entropy": str(e)}
            for label, by_steps in table.items() for steps, (g, e) in by_steps.items()]


def claims(sdtt, idlm):
    # the last round's student at every step count: the claims must use each round at its own steps
    final = {4: (1.0, 2.0), 2: (1.0, 2.0)}
    sweep = rows({"t.pt": {64: (3.0, 2.0)}, "sdtt/round*.pt": sdtt, "sdtt/round4.pt": final, "i.pt": idlm,
                  "exact": {64: (2.8, 2.0), 4: (9.0, 2.0)}})
    lambada = [{"label": label, "accuracy": "0.5"} for name, label in LABELS.items() if name != "sdtt"]
    return reproduce.check_claims("synthetic", sweep, lambada, LABELS, 64)


def test_a_student_reproduces_only_with_genppl_at_most_the_teachers_and_95_percent_of_its_entropy():
    lines = claims(sdtt={4: (3.0, 1.9), 2: (5.0, 1.9)}, idlm={4: (2.9, 1.89), 2: (4.0, 2.0)})
    assert "SDTT at L/16 = 4 steps: GenPPL 3.00, entropy 1.90 (95.0% of the teacher's) -> reproduced" in lines[2]
    assert "IDLM at L/16 = 4 steps: GenPPL 2.90, entropy 1.89 (94.5% of the teacher's) -> NOT reproduced" in lines[3]
    assert lines[4].startswith("- IDLM vs SDTT at 4 steps: GenPPL 2.90 vs 3.00 -> reproduced")
    assert lines[5].startswith("- IDLM vs SDTT at 2 steps: GenPPL 4.00 vs 5.00 -> reproduced")
    assert "GenPPL 9.00 at L/16 = 4 steps and 2.80 at L" in lines[6] and lines[6].endswith("3.0x")
    assert lines[7] == "- LAMBADA-style one-pass suffix accuracy: teacher 0.500, SDTT (last round) 0.500, IDLM 0.500, exact denoiser 0.500"


def test_idlm_worse_than_sdtt_at_equal_steps_is_not_reproduced():
    lines = claims(sdtt={4: (3.1, 2.0), 2: (5.0, 2.0)}, idlm={4: (3.2, 2.0), 2: (4.0, 2.0)})
    assert "-> NOT reproduced" in lines[2] and "-> NOT reproduced" in lines[3]
    assert "at 4 steps: GenPPL 3.20 vs 3.10 -> NOT reproduced" in lines[4]
    assert "at 2 steps: GenPPL 4.00 vs 5.00 -> reproduced" in lines[5]
