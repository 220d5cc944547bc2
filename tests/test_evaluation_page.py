"""docs/EVALUATION.md is what docs/make_evaluation_page.py renders from the runs stored
beside it, so the page's figures can be traced to the runs and regenerated."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _render(*args):
    proc = subprocess.run([sys.executable, "docs/make_evaluation_page.py", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_page_matches_stored_runs():
    proc = subprocess.run(
        [sys.executable, "docs/make_evaluation_page.py", "--stored", "docs/evaluation/runs",
         "--notes", "docs/evaluation/findings.md"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(ROOT, "docs", "EVALUATION.md")) as f:
        page = f.read()
    assert proc.stdout == page, "docs/EVALUATION.md differs from the stored runs: render it again"


def test_stored_averages_run_renders_the_same(tmp_path):
    """A run given with --averages renders the same section from the file --store keeps of it
    as from the run itself."""
    import json

    with open(os.path.join(ROOT, "docs", "evaluation", "runs", "main.json")) as f:
        run = json.load(f)
    run["average_size"] = run["cnn_lstm"]["ensemble"]["members"]
    averages = tmp_path / "averages-run.json"
    averages.write_text(json.dumps(run))
    stored = tmp_path / "runs"

    direct = _render("docs/evaluation/runs/main.json", "--averages", str(averages),
                    "--store", str(stored))
    again = _render("--stored", str(stored))
    assert f"## Averages of {run['average_size']} networks" in direct
    assert again == direct
    assert (stored / "averages.json").stat().st_size < 20_000


def test_ablation_reference_renders_the_same(tmp_path):
    """An earlier main run given with --ablation-reference pairs the ablations' first row,
    and the file --store keeps of it renders the same table."""
    stored = tmp_path / "runs"

    runs = os.path.join("docs", "evaluation", "runs")
    direct = _render(os.path.join(runs, "main.json"),
                    "flow weighting=" + os.path.join(runs, "ablation-flow-weighting.json"),
                    "--ablation-reference", os.path.join(runs, "ablation-reference.json"),
                    "--store", str(stored))
    again = _render("--stored", str(stored))
    assert again == direct
    assert "| main settings, repeats 0-2 |" in direct
    assert "The ablations and that row predate the server port prior" in direct
