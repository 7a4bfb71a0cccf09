"""Dependencies run one way: the build (`facestream_models`, models/) may import the runtime
(`stream`), never the reverse. Only the `facestream models pull` command reaches into the build, from
inside its command function (the CLI is the top of both)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.e2e  # every test here starts processes

STREAM = REPO / "stream"
# (module file, function) that may import the build: the `models pull` command.
ALLOWED = {("stream/model_commands.py", "cmd_pull")}

# Run in a fresh interpreter: the build's packages cannot be imported at all, then every module of
# stream is imported and `facestream models list --json` runs.
BLOCKED_RUN = r"""
import importlib, json, pkgutil, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("facestream_models", "models"):
            raise ModuleNotFoundError(f"blocked: {name}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
import stream

names = [m.name for m in pkgutil.walk_packages(stream.__path__, "stream.") if m.name != "stream.__main__"]
for name in names:
    importlib.import_module(name)
assert not [m for m in sys.modules if m.split(".")[0] in ("facestream_models", "models")]

from stream.cli import main

rc = main(["models", "list", "--json"])
try:
    main(["models", "pull"])
    pull = "ran"
except ModuleNotFoundError as e:
    pull = e.name
print(json.dumps({"imported": names, "list_rc": rc, "pull": pull}))
"""


def test_stream_runs_without_the_build(tmp_path: Path) -> None:
    env = {**os.environ, "FACESTREAM_HOME": str(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    listed, report = json.loads(lines[-2]), json.loads(lines[-1])
    assert {"stream.detector", "stream.registry", "stream.modelstore", "stream.pipeline.demo"} <= set(
        report["imported"]
    )
    assert report["list_rc"] == 0 and {m["name"] for m in listed["models"]} >= {"mtcnn", "dlib-resnet-v1"}
    assert report["pull"].startswith("facestream_models")  # the one command that needs the build


def _build_imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(enclosing top-level function or "<module>", line) of every import of the build."""
    found = []
    for top in ast.iter_child_nodes(tree):
        where = (
            top.name if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) else "<module>"
        )
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            if any(m.split(".")[0] in ("facestream_models", "models") for m in mods):
                found.append((where, node.lineno))
    return found


def test_no_stream_module_imports_the_build_even_lazily() -> None:
    offenders = []
    for path in sorted(STREAM.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for where, line in _build_imports(ast.parse(path.read_text(), rel)):
            if (rel, where) not in ALLOWED:
                offenders.append(f"{rel}:{line} ({where})")
    assert not offenders, "stream imports the build: " + ", ".join(offenders)
