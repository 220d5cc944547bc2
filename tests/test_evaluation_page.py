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
