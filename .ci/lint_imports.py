"""Check the import contracts of pyproject.toml ([tool.importlinter]) with import-linter.

import-linter (grimp) reads a package from one folder, but slimflow installs the required
top-level folders models/, tasks/ and flows/ as slimflow.models, slimflow.tasks and
slimflow.flows (setup.py). This script lays the sources out as they are installed, in a
temporary folder, and runs lint-imports there. Usage:

    python .ci/lint_imports.py [--extra RELPATH=SOURCE ...]

``--extra`` adds a file to the laid-out tree (the tests use it to show that a forbidden import
fails the check).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {
    "slimflow": "slimflow",
    "models": "slimflow/models",
    "tasks": "slimflow/tasks",
    "flows": "slimflow/flows",
}


def lay_out(dest: Path) -> Path:
    for src, rel in LAYOUT.items():
        for f in (ROOT / src).rglob("*.py"):
            target = dest / rel / f.relative_to(ROOT / src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extra", action="append", default=[], help="RELPATH=SOURCE added to the laid-out tree")
    args = ap.parse_args(argv)
    exe = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="slimflow-lint-") as tmp:
        tree = lay_out(Path(tmp))
        for item in args.extra:
            rel, _, source = item.partition("=")
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_text(source + "\n", encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        cmd = [str(exe) if exe.exists() else "lint-imports", str(ROOT / "pyproject.toml"), "--no-cache"]
        return subprocess.run(cmd, cwd=tree, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
