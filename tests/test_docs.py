"""The README is the first page a user reads: short, Spaces front matter first, commands a shell can
run as written, a layout table that matches the tree, and no words about the machine it was built on."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
USER_DOCS = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_LEVEL = ["app.py", "build_index.py", "retrieval/", "webui/", "collect/", "bench/", "tests/", "docs/",
             "requirements.txt", "requirements-dev.txt", "pyproject.toml", "packages.txt", "scripts/setup.sh",
             ".ci/run"]


def test_readme_is_short_and_opens_with_the_spaces_front_matter():
    text = README.read_text("utf-8")
    assert len(README.read_bytes()) <= 15_000
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    pinned = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    assert front["sdk_version"] == pinned["gradio"]          # Spaces runs the version the index was built with
    after = text.split("---\n", 2)[2].lstrip()
    assert after.startswith("# Lookalike")


def test_the_two_commands_use_the_virtual_environment_and_ci_runs_the_test_command_exactly():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text("utf-8"), re.S)
    app_cmd = next(b.strip() for b in blocks if "app.py" in b and "setup.sh" in b)
    test_cmd = next(b.strip() for b in blocks if "pytest" in b and "setup.sh" in b)
    for cmd in (app_cmd, test_cmd):
        assert cmd.startswith("bash scripts/setup.sh")
        assert re.search(r"(^|&& )python ", cmd) is None       # plain Debian has no `python`
    assert ".venv/bin/python app.py" in app_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def command_lines(text: str) -> list[str]:
    """Shell lines of fenced blocks, and inline code spans that are commands."""
    lines = [line.split(" #")[0] for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    inline = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    return lines + [c for c in inline if re.match(r"(bash|python3?|\.venv/bin/python|HF_HUB_OFFLINE=1) ", c)]


def test_no_command_has_a_placeholder_the_shell_misreads():
    old = "Try `python -m retrieval search data/test/bird/<file>.jpg --index index`."
    assert any("<file>" in c for c in command_lines(old))      # the check sees what it is meant to
    for doc in USER_DOCS:
        for code in command_lines(doc.read_text("utf-8")):
            assert not re.search(r"<[A-Za-z_][^>]*>", code), f"{doc.name}: {code}"


def test_user_docs_speak_of_the_users_machine():
    banned = re.compile(r"this machine|no GPU was lent|GPU (?:was|is) lent|\blent\b|sandbox", re.I)
    for doc in USER_DOCS:
        hits = [line for line in doc.read_text("utf-8").splitlines() if banned.search(line)]
        assert not hits, f"{doc.relative_to(ROOT)}: {hits[:3]}"


def test_layout_table_matches_the_tree():
    text = README.read_text("utf-8")
    table = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            named |= set(re.findall(r"`([^`]+)`", row.split("|")[1]))
    for path in named:
        assert (ROOT / path).exists(), f"the layout table names {path}, which is not in the tree"
    for path in TOP_LEVEL:
        assert path in named, f"{path} is missing from the README's layout table"
    webui_row = next(r for r in table.splitlines() if r.startswith("| `webui/`"))
    for module in sorted((ROOT / "webui").glob("*.py")):
        if module.name != "__init__.py":
            assert f"`{module.name}`" in webui_row, f"webui/{module.name} is not described"


def test_relative_links_point_at_files_that_exist():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    for doc in USER_DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text("utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path = (doc.parent / target).resolve()
            assert path.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
            rel = path.relative_to(ROOT).as_posix()
            assert path.is_dir() or rel in tracked or not tracked, f"{target} is not tracked by git"


def test_runtime_requirements_hold_no_test_or_lint_tools_and_ci_lints_before_testing():
    """Spaces installs requirements.txt: test and lint tools live in requirements-dev.txt, which
    `setup.sh --dev` installs. Fails before round 4: pytest was in requirements.txt, no lint ran."""
    def names(path: Path) -> set[str]:
        return {line.split("==")[0].strip().lower() for line in path.read_text().splitlines()
                if "==" in line and not line.lstrip().startswith("#")}
    dev_tools = {"pytest", "ruff", "mypy"}
    assert not names(ROOT / "requirements.txt") & dev_tools
    assert dev_tools <= names(ROOT / "requirements-dev.txt")
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    assert "requirements-dev.txt" in (ROOT / "scripts" / "setup.sh").read_text()
    run = (ROOT / ".ci" / "run").read_text()
    assert run.index(".venv/bin/ruff check") < run.index(".venv/bin/mypy") < run.index("pytest")
