"""Build hook: record modexp's own commit into the package (modexp/_build.py), read by modexp/provenance.py.

Everything else about the package is in pyproject.toml. A build outside a git checkout (from an sdist)
records nothing, and meta.json then says "unknown".
"""

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads its checkout's git at run time
        try:
            if Path(git("rev-parse", "--show-toplevel")).resolve() != ROOT:
                return  # the source sits inside another repository (an sdist unpacked there)
            commit, dirty = (
                git("rev-parse", "HEAD"),
                bool(git("status", "--porcelain", "--untracked-files=no")),
            )
        except (OSError, subprocess.SubprocessError):
            return
        target = Path(self.build_lib) / "modexp" / "_build.py"
        target.write_text(
            f'"""Written by setup.py at build time."""\n\nCOMMIT = {commit!r}\nDIRTY = {dirty!r}\n'
        )


setup(cmdclass={"build_py": BuildPyWithCommit})
