"""Build hook: ship the Snakemake workflow inside the package.

Everything else is in pyproject.toml. A regular (non-editable) install gets
a copy of the workflow (Snakefile, rules/, scripts/, config/, report/, envs/,
profiles/) as ``shardsort/workflow_files/``, where ``shardsort.cli`` finds it;
an editable install uses the source tree instead.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
WORKFLOW_ITEMS = ("Snakefile", "rules", "scripts", "config", "report", "envs", "profiles")


class BuildWithWorkflow(build_py):
    """build_py that also copies the workflow into the built package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "shardsort" / "workflow_files"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
        for item in WORKFLOW_ITEMS:
            source = ROOT / item
            if source.is_dir():
                shutil.copytree(source, target / item, ignore=ignore)
            else:
                shutil.copy2(source, target / item)


setup(cmdclass={"build_py": BuildWithWorkflow})
