"""Type-check the package with mypy.

The required folders (server/, index/, ...) are mapped into ``lamina`` by
setuptools' package-dir, which mypy cannot follow; this script builds the same
tree from symlinks in a temporary directory and checks that, reporting paths
relative to the repository.

    python scripts/typecheck.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("server", "index", "storage", "engine", "client", "proto")


def build_tree(dest: Path) -> Path:
    pkg = dest / "lamina"
    pkg.mkdir()
    for entry in (ROOT / "lamina").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name in SUBPACKAGES:
        (pkg / name).symlink_to(ROOT / name)
    return pkg


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        build_tree(Path(tmp))
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--config-file",
                str(ROOT / "pyproject.toml"),
                "-p",
                "lamina",
                "--cache-dir",
                str(ROOT / ".mypy_cache"),
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
    out = (result.stdout + result.stderr).replace("lamina/", "").strip()
    print(out)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
