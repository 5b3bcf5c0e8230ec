"""The limits the code base keeps: no import cycle among the modules of daemon/ and connectors/ (imports inside
functions count too), no production module over 600 lines, no Markdown link that leaves the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "connectors")
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def production_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, resolved to the deepest known module ("from a.b import c" is a.b.c
    when that is a module, else a.b)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def project_graph() -> dict[str, set[str]]:
    modules = production_modules()
    known = set(modules)
    graph = {name: imports_of(name, path, known) for name, path in modules.items()}
    # a package's __init__ importing its own submodules is how a package exposes them, not a cycle of design
    return {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}


def test_no_import_cycle_among_the_modules():
    assert find_cycle(project_graph()) is None, " -> ".join(find_cycle(project_graph()) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_production_module_is_over_the_line_limit():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in production_modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


# a Markdown link, or a path to a Markdown file in backticks (how the old README pointed outside)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)|`((?:\.\./|/)[^`\s]*\.md)`")


def test_no_markdown_file_links_outside_the_repository():
    outside = []
    for path in REPO_ROOT.rglob("*.md"):
        if any(part.startswith(".") for part in path.relative_to(REPO_ROOT).parts) or "node_modules" in path.parts:
            continue
        for match in LINK.finditer(path.read_text(encoding="utf-8")):
            target = match.group(1) or match.group(2)
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            resolved = (REPO_ROOT if target.startswith("/") else path.parent) / target.lstrip("/").split("#")[0]
            if not resolved.resolve().is_relative_to(REPO_ROOT) or not resolved.exists():
                outside.append(f"{path.relative_to(REPO_ROOT)}: {target}")
    assert outside == []


def test_the_readme_names_the_training_values_the_demo_sets_for_the_tiny_model(tmp_path):
    import yaml

    from daemon.demo.walkthrough import MODELS, _demo_config

    demo = yaml.safe_load(_demo_config(tmp_path, "127.0.0.1:9092", MODELS["tiny"]).read_text())["training"]
    readme = " ".join((REPO_ROOT / "README.md").read_text("utf-8").split())
    section = readme[readme.index("**A first cycle with the tiny model.**"):]
    assert "epochs" not in demo and "learning_rate" not in demo  # auto: resolved from the base's size
    for key in ("max_seq_len", "row_tokens"):
        assert f"{key}: {demo[key]}" in section, key
