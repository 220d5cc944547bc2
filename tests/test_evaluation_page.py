"""docs/EVALUATION.md is what docs/make_evaluation_page.py renders from the runs stored
beside it, so the page's figures can be traced to the runs and regenerated."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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

    def render(*args):
        proc = subprocess.run([sys.executable, "docs/make_evaluation_page.py", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    direct = render("docs/evaluation/runs/main.json", "--averages", str(averages),
                    "--store", str(stored))
    again = render("--stored", str(stored))
    assert f"## Averages of {run['average_size']} networks" in direct
    assert again == direct
    assert (stored / "averages.json").stat().st_size < 20_000
