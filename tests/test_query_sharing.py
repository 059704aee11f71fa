"""The compiler's query sharing (tests/cases/query_sharing.yaml): which data requirements
reuse another's prefetch key, seen through a loaded site's service: its requirements'
derived_from and the prefetch templates its discovery asks for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .support import tiny_site

TABLE = yaml.safe_load((Path(__file__).parent / "cases" / "query_sharing.yaml").read_text())


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["name"] for c in TABLE["cases"]])
def test_which_requirements_share_a_prefetch_key(case, tmp_path):
    service = tiny_site.load(tmp_path / "site", case["requirements"], TABLE["valueSets"])
    keys = [r["id"] for r in case["requirements"]]
    assert [r.key for r in service.plan.requirements] == keys
    shares = {r.key: r.derived_from for r in service.plan.requirements if r.derived_from}
    assert shares == case["shares"]
    own = [k for k in keys if k not in case["shares"]]
    assert sorted(service.prefetch) == sorted(own)  # one template per query, none for a shared key
    assert len(set(service.prefetch.values())) == len(own)
    for r in service.plan.requirements:
        assert (r.template is None) == (r.key in case["shares"])
