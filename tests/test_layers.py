"""The layers run one way: collect -> data -> index -> app. Read every import, including the ones
inside functions, and fail on an arrow that runs back up the flow."""
from __future__ import annotations

import ast
import re
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


# -- no reads of another object's private attributes -------------------------------------------------
# `obj._name` where obj is not self / cls (or super()): a package uses another's public API only.
# Exceptions, each with its reason: namedtuple's own public methods; the pinned Gradio's queue
# internals that the bounded admission needs (webui/admission.py says why; tests/test_busy.py checks
# them); chromadb's client cache, which keeps a failed client (retrieval/vectorstore.py); torch's only
# probe for native bf16 (retrieval/embedders/precision.py).
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}
THIRD_PARTY_INTERNALS = {("webui/admission.py", "_queue"), ("webui/admission.py", "_id"),
                         ("webui/limits.py", "_queue"),
                         ("retrieval/vectorstore.py", "_identifier_to_system"),
                         ("retrieval/vectorstore.py", "_identifier_to_refcount"),
                         ("retrieval/embedders/precision.py", "_is_mkldnn_bf16_supported")}
CHECKED = ["retrieval", "collect", "webui", "bench", "app.py", "build_index.py"]


def private_reads(path: Path) -> list[tuple[int, str]]:
    """(line, expression) of every `x._name` in a file whose x is not self, cls or super()."""
    out = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
            continue
        if node.attr in NAMEDTUPLE_API:
            continue
        out.append((node.lineno, f"{ast.unparse(owner)}.{node.attr}"))
    return out


def _files(names: list[str]) -> list[Path]:
    return [f for name in names for f in ((ROOT / name).rglob("*.py") if (ROOT / name).is_dir() else [ROOT / name])]


def test_the_private_read_finder_sees_reads_through_other_objects(tmp_path):
    src = ("class A:\n    def f(self, other):\n        self._ok = cls_x = 1\n        super()._fine()\n"
           "        return other._secret, self.index._warm_error, p._replace(x=1)\n")
    (tmp_path / "x.py").write_text(src)
    assert [expr for _, expr in private_reads(tmp_path / "x.py")] == ["other._secret", "self.index._warm_error"]


def test_no_module_reads_another_objects_private_attribute():
    bad = []
    for f in _files(CHECKED):
        rel = f.relative_to(ROOT).as_posix()
        bad += [f"{rel}:{line} reads {expr}" for line, expr in private_reads(f)
                if (rel, expr.rsplit(".", 1)[1]) not in THIRD_PARTY_INTERNALS]
    assert not bad, "private attributes read across objects (add a public API instead):\n" + "\n".join(bad)


# -- no command-line words in the core --------------------------------------------------------------
# Errors and notes from retrieval/ reach the web page too, so they say what to do in plain words and
# carry a retrieval.errors.Remedy; only retrieval/cli.py names flags and commands (cli.remedy_hint).
# Docstrings are developer documentation and may name the command line.
CLI_WORDS = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+|python (?:-m retrieval|build_index\.py|app\.py)")
CLI_MODULES = {"retrieval/cli.py", "retrieval/cli_explain.py", "retrieval/cli_map.py"}


def cli_words(path: Path) -> list[tuple[int, str]]:
    """(line, word) of every flag or command in a string of a file, docstrings left out."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, word) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
            for word in CLI_WORDS.findall(n.value)]


def test_the_cli_word_finder_skips_docstrings_only(tmp_path):
    (tmp_path / "x.py").write_text('"""Run python build_index.py --model x."""\n'
                                   'def f():\n    """--doc"""\n    raise ValueError(f"rebuild with --model {1}")\n'
                                   'A = "python -m retrieval evaluate"\nB = "a-b --cc -- d"\n')
    assert sorted(cli_words(tmp_path / "x.py")) == [(4, "--model"), (5, "python -m retrieval"), (6, "--cc")]


def test_no_command_line_words_in_core_messages():
    bad = [f"{f.relative_to(ROOT).as_posix()}:{line}: {word}" for f in sorted((ROOT / "retrieval").rglob("*.py"))
           if f.relative_to(ROOT).as_posix() not in CLI_MODULES for line, word in cli_words(f)]
    assert not bad, "command-line words in core strings (raise with a Remedy instead):\n" + "\n".join(bad)


# -- small pieces ---------------------------------------------------------------------------------
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`name (lines)` of every function or method of a file longer than `limit` lines."""
    return [f"{n.name} ({n.end_lineno - n.lineno + 1})" for n in ast.walk(ast.parse(path.read_text("utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno is not None
            and n.end_lineno - n.lineno + 1 > limit]


def test_the_length_finder_counts_a_function_from_def_to_its_last_line(tmp_path):
    (tmp_path / "x.py").write_text("def short():\n    return 1\n\n\ndef long():\n" + "    x = 1\n" * 3)
    assert long_functions(tmp_path / "x.py", limit=3) == ["long (4)"]


def test_modules_and_functions_stay_small():
    files = _files(["retrieval", "collect", "webui", "app.py", "build_index.py"])
    big = [f"{f.relative_to(ROOT)}: {n} lines" for f in files
           if (n := len(f.read_text("utf-8").splitlines())) > MAX_MODULE_LINES]
    long = [f"{f.relative_to(ROOT)}: {name}" for f in files for name in long_functions(f)]
    assert not big and not long, "split these:\n" + "\n".join(big + long)
