"""The build step that puts the knowledge inside the wheel (docs/packaging.md).

The knowledge lives at the top of the repository (plandefinitions/, valuesets/: DESIGN.md
fixes that layout), the try-it page's scenarios in tests/scenarios/ and the example site
they are written for in examples/site/. A wheel must carry them, so build_py copies them
into the package as cds_service/_bundled/{plandefinitions,valuesets,scenarios,site}, where
cds_service/config.py finds them at run time. An editable install (a checkout) gets no
copy: config.py then reads the source tree's folders.

With MM_CDS_COMPILE=1 (the image's build stage, `make native`), the request path's hottest
modules (cds_service/_native.py) are also compiled with mypyc, and build_ext writes the
record of their sources that start-up checks against.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
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


# Read from its path: the package's dependencies are not installed when a wheel is built.
NATIVE = runpy.run_path(str(HERE / "cds_service" / "_native.py"))
COMPILE = os.environ.get("MM_CDS_COMPILE", "") == "1"


class BuildExtWithRecord(build_ext):
    def finalize_options(self) -> None:
        super().finalize_options()
        if COMPILE and not self.parallel:
            self.parallel = os.cpu_count() or 1  # one compiler per core: a module per extension

    def run(self) -> None:
        super().run()
        if not COMPILE:
            return
        import mypy.version

        # The package's folder in this build's output: the source tree with --inplace.
        root = Path(self.get_ext_fullpath(NATIVE["MODULES"][0])).parents[1]
        content = NATIVE["record"](HERE / "cds_service", f"mypyc {mypy.version.__version__}")
        (root / NATIVE["RECORD"]).write_text(json.dumps(content, indent=1) + "\n")


def _compiled() -> list[Any]:
    if not COMPILE:
        return []
    from mypyc.build import mypycify

    return mypycify([str(NATIVE["source_path"](Path("cds_service"), m)) for m in NATIVE["MODULES"]],
                    opt_level="3", separate=True)


setup(cmdclass={"build_py": BuildPyWithKnowledge, "build_ext": BuildExtWithRecord}, ext_modules=_compiled())
