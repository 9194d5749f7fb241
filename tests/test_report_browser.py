"""The HTML report renders in a real headless browser: its tables are there and its embedded PNG
plots decode (naturalWidth > 0). Needs Debian's chromium (.ci/run installs it); skips without it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import EXAMPLE
from selfguide.backends.fake import FakeBackend
from selfguide.pipeline import make_context, run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = ("<script>window.addEventListener('load', () => {document.body.setAttribute('data-probe', JSON.stringify({"
         "tables: document.querySelectorAll('table').length, rows: document.querySelectorAll('tr').length,"
         "images: [...document.images].map(i => i.naturalWidth)}));});</script>")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path, tiny_model):
    ctx = make_context(EXAMPLE, overrides=[f"run_dir={tmp_path / 'runs'}", f"model.name={tiny_model}", "generate.target_inputs=20",
                                           "annotate.n=3", "evaluate.max_items=8", "train.epochs=1", "model.dtype=float32",
                                           "evaluate.bootstrap=100"], backend_factory=lambda: FakeBackend())
    result = run(EXAMPLE, ctx=ctx)
    page = tmp_path / "probe.html"
    page.write_text(result.report.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"data-probe=\"([^\"]*)\"", proc.stdout)
    assert m, proc.stdout[:2000]
    import html
    import json

    probe = json.loads(html.unescape(m.group(1)))
    assert probe["tables"] >= 4 and probe["rows"] > 10
    assert len(probe["images"]) >= 3 and all(w > 100 for w in probe["images"]), probe
    assert "selfguide" in proc.stdout and result.verdict["sentence"][:30] in html.unescape(proc.stdout)
