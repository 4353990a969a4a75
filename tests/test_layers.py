"""The layers run one way: collect -> data -> index -> app. Read every import, including the ones
inside functions, and fail on an arrow that runs back up the flow."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> top-level modules it must never import
FORBIDDEN = {
    "retrieval": {"gradio", "gradio_client", "collect", "webui", "bench", "app", "build_index"},
    "collect": {"gradio", "gradio_client", "webui", "bench", "app"},
    "webui": {"bench", "build_index"},
}


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in a file, at any depth; relative imports resolve
    to the file's own package."""
    out = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return out


def test_the_import_reader_sees_imports_inside_functions_and_classes(tmp_path):
    src = ("import os\nfrom . import atomic\n\ndef f():\n    import gradio as gr\n"
           "class C:\n    def m(self):\n        from collect.hub import pull\n")
    (tmp_path / "x.py").write_text(src)
    assert [m for _, m in imported_modules(tmp_path / "x.py", "retrieval")] == \
        ["os", "retrieval", "gradio", "collect"]


def test_no_import_runs_back_up_the_flow():
    bad = []
    for package, forbidden in FORBIDDEN.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, package
        for f in files:
            for line, module in imported_modules(f, package):
                if module in forbidden:
                    bad.append(f"{f.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "imports that run back up collect -> data -> index -> app:\n" + "\n".join(bad)


def test_the_core_imports_without_gradio_or_collect():
    import subprocess
    import sys
    code = ("import sys, pkgutil, importlib, retrieval\n"
            "for m in pkgutil.walk_packages(retrieval.__path__, 'retrieval.'):\n"
            "    m.name.endswith('__main__') or importlib.import_module(m.name)\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('gradio', 'collect', 'webui'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
