"""Library packages hold no experiment code: they import neither pandas nor matplotlib (not
even inside a function) nor ``experiments``, which holds the workflows that use them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("prune_env", "agents", "target_models")
EXPERIMENT_ONLY = ("pandas", "matplotlib", "experiments")

IMPORT_ALL = f"""
import importlib, json, pkgutil, sys
names = []
for package in {LIBRARY!r}:
    module = importlib.import_module(package)
    names.append(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        importlib.import_module(info.name)
        names.append(info.name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({EXPERIMENT_ONLY!r}))
print(json.dumps({{"modules": names, "loaded": loaded}}))
"""


def test_importing_every_library_module_loads_neither_pandas_nor_matplotlib():
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"prune_env.env", "agents.search", "target_models.registry"} <= set(result["modules"])
    assert result["loaded"] == []


def test_no_library_module_imports_experiment_code_even_lazily():
    offending = []
    for package in LIBRARY:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                offending += [f"{path.relative_to(REPO)}:{node.lineno} imports {name}" for name in names
                              if name.split(".")[0] in EXPERIMENT_ONLY]
    assert offending == []
