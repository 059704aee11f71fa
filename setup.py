"""The build step that puts the knowledge inside the wheel (docs/packaging.md).

The knowledge lives at the top of the repository (plandefinitions/, valuesets/: DESIGN.md
fixes that layout), the try-it page's scenarios in tests/scenarios/ and the example site
they are written for in examples/site/. A wheel must carry them, so build_py copies them
into the package as cds_service/_bundled/{plandefinitions,valuesets,scenarios,site}, where
cds_service/config.py finds them at run time. An editable install (a checkout) gets no
copy: config.py then reads the source tree's folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# folder inside cds_service/_bundled/ <- folder of the source tree
BUNDLED = {
    "plandefinitions": "plandefinitions",
    "valuesets": "valuesets",
    "scenarios": "tests/scenarios",
    "site": "examples/site",
}
SCENARIO_SETTINGS = "_settings.yaml"
# tests/scenarios/_settings.yaml names its site directories relative to itself; in the
# package the site sits beside the scenarios.
SITE_IN_CHECKOUT = "../../examples/site"
SITE_IN_PACKAGE = "../site"


class BuildPyWithKnowledge(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # a checkout reads its own folders (cds_service/config.py)
        target = Path(self.build_lib) / "cds_service" / "_bundled"
        if target.exists():
            shutil.rmtree(target)
        for name, source in BUNDLED.items():
            folder = HERE / source
            if not folder.is_dir():
                raise SystemExit(f"setup.py: {source}/ is missing; the wheel must carry it")
            shutil.copytree(folder, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        settings = target / "scenarios" / SCENARIO_SETTINGS
        text = settings.read_text()
        if SITE_IN_CHECKOUT not in text:
            raise SystemExit(f"setup.py: {BUNDLED['scenarios']}/{SCENARIO_SETTINGS} no longer names "
                             f"{SITE_IN_CHECKOUT}; update BUNDLED and SITE_IN_CHECKOUT")
        settings.write_text(text.replace(SITE_IN_CHECKOUT, SITE_IN_PACKAGE))


setup(cmdclass={"build_py": BuildPyWithKnowledge})
