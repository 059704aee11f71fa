"""The README's worked example of adding a recommendation (examples/new-recommendation/),
step by step: validate, run its scenarios, see it served after a reload, in the catalogue."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from cds_service import cli, create_app, scenarios, web

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "new-recommendation"


def test_every_file_the_guide_names_exists():
    guide = (ROOT / "docs" / "authoring.md").read_text().split("### Adding a recommendation, end to end")[1].split("\n## ")[0]
    named = set(re.findall(r"`((?:examples/new-recommendation/)?(?:site|scenarios)/[\w./-]+)`", guide))
    assert len(named) >= 6
    for path in named:
        full = ROOT / path if path.startswith("examples/") else EXAMPLE / path
        assert full.exists(), path


def test_validate_then_run_its_scenarios(capsys, monkeypatch):
    monkeypatch.setenv("MM_CDS_SITE_DIRS", str(EXAMPLE / "site"))
    assert cli.main(["validate"]) == 0
    assert "mm-example-cmv" in capsys.readouterr().out
    monkeypatch.delenv("MM_CDS_SITE_DIRS")
    assert cli.main(["test", str(EXAMPLE / "scenarios")]) == 0  # _settings.yaml names the site
    out = capsys.readouterr().out
    total = len(scenarios.load_all([EXAMPLE / "scenarios"]))
    assert out.rstrip().endswith(f"{total} passed, 0 failed") and total >= 3
    assert "fired: EX-1 | expected: EX-1" in out


def test_files_added_to_a_served_site_directory_are_served_after_a_reload(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    app = create_app({"site_dirs": (str(site),)})
    client = app.test_client()
    try:
        assert "mm-example-cmv" not in {s["id"] for s in client.get("/cds-services").get_json()["services"]}
        for path in (EXAMPLE / "site").glob("*.json"):
            shutil.copy(path, site)
        assert client.post("/admin/reload").status_code == 200
        services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
        assert services["mm-example-cmv"]["hook"] == "order-sign"
        assert "cmvSerology" in services["mm-example-cmv"]["prefetch"]
        page = client.get("/").get_data(as_text=True)
        assert "<td>EX-1</td>" in page and "Example: check CMV IgG before CAR-T cell therapy" in page
    finally:
        web.state_of(app).feedback.close()
