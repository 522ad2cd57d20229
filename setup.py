"""Build hook: the operator's pages ship inside the package.

The top-level ``web/`` folder is the source of the pages and the vendored front-end libraries.
Building the package (a wheel, or a wheel from the sdist, which carries ``web/`` through
MANIFEST.in) copies it into ``hive_actors/webroot/`` so an installed hive serves its dashboard;
:func:`hive_actors.gateway.app.default_web_root` looks there first. An editable install copies
nothing and keeps serving the repository's ``web/``. Everything else is in setup.cfg.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

WEB = "web"
"""The pages' source folder, next to this file."""
WEBROOT = ("hive_actors", "webroot")
"""Where the copy goes in the package (``hive_actors/httpd`` is the web server's code)."""
EXCLUDED_NAMES = frozenset(
    {"node_modules", "package.json", "package-lock.json", "README.md", "tests", "__pycache__"}
)
"""What in ``web/`` is not a page: npm's tooling, the folder's notes, tests."""


def web_files(web: Path) -> list[Path]:
    """The files of ``web`` to ship, relative to it, without the excluded names or dot-files
    at any depth."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(web):
        dirnames[:] = sorted(
            d for d in dirnames if d not in EXCLUDED_NAMES and not d.startswith(".")
        )
        for name in sorted(filenames):
            if name in EXCLUDED_NAMES or name.startswith("."):
                continue
            found.append((Path(dirpath) / name).relative_to(web))
    return found


class build_py_with_web(build_py):  # type: ignore[misc, unused-ignore]
    """``build_py`` that also copies ``web/`` into ``<build_lib>/hive_actors/webroot/``."""

    def _web_source(self) -> Path:
        return Path(__file__).resolve().parent / WEB

    def _copy_web(self) -> bool:
        # An editable install serves the repository's web/ (the package is the source tree).
        return not getattr(self, "editable_mode", False)

    def run(self) -> None:
        super().run()
        if not self._copy_web():
            return
        web = self._web_source()
        files = web_files(web)
        if "index.html" not in {str(f) for f in files}:
            raise SystemExit(f"setup.py: {web} has no index.html; the package needs its pages")
        target = Path(self.build_lib, *WEBROOT)
        for rel in files:
            dest = target / rel
            self.mkpath(str(dest.parent))
            self.copy_file(str(web / rel), str(dest), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if self._copy_web():
            target = Path(self.build_lib, *WEBROOT)
            outputs += [str(target / rel) for rel in web_files(self._web_source())]
        return outputs


setup(cmdclass={"build_py": build_py_with_web})
