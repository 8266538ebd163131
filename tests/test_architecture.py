"""The house rules that keep loraboost easy to change: the package's imports form no circle, modules stay
small, no docstring points outside the repository, and the private APIs it writes are checked at startup."""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).parents[1] / "src" / "loraboost"
# Modules allowed past MAX_LINES because one concept needs the room (the boosting engine's round changes).
LARGE_ON_PURPOSE = {"booster"}
MAX_LINES = 300


def local_imports(path: Path) -> set[str]:
    """The package modules a module imports anywhere in it (top level, functions, TYPE_CHECKING blocks)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return names


def test_the_package_imports_form_no_circle():
    graph = {path.stem: local_imports(path) for path in SOURCE.glob("*.py") if path.stem != "__init__"}
    graph = {module: {n for n in imported if n in graph} for module, imported in graph.items()}
    visiting, done = [], set()

    def visit(module):
        if module in visiting:
            cycle = visiting[visiting.index(module) :] + [module]
            pytest.fail(f"import circle: {' -> '.join(cycle)}")
        if module in done:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_modules_stay_small_unless_one_concept_needs_the_room():
    sizes = {path.stem: len(path.read_text().splitlines()) for path in SOURCE.glob("*.py")}
    assert {name for name, lines in sizes.items() if lines > MAX_LINES} <= LARGE_ON_PURPOSE, sizes


def test_docstrings_point_only_inside_the_repository():
    for path in SOURCE.glob("*.py"):
        assert "PAPERS.md" not in path.read_text(), path.name


def test_a_peft_without_the_private_disable_flag_fails_at_startup_with_one_sentence(monkeypatch):
    from peft.tuners.tuners_utils import BaseTunerLayer

    from loraboost import compat

    compat.check_private_apis()  # the installed versions pass
    monkeypatch.delattr(BaseTunerLayer, "_disable_adapters")
    compat.check_private_apis.cache_clear()
    with pytest.raises(RuntimeError, match=r"PEFT's BaseTunerLayer._disable_adapters .* tested with peft 0.21"):
        compat.check_private_apis()
    compat.check_private_apis.cache_clear()


def test_a_torch_whose_get_last_lr_ignores_the_cache_fails_at_startup(monkeypatch):
    import torch

    from loraboost import compat

    monkeypatch.setattr(torch.optim.lr_scheduler.LRScheduler, "get_last_lr", lambda self: [1.0])
    compat.check_private_apis.cache_clear()
    with pytest.raises(RuntimeError, match=r"torch's LRScheduler._last_lr"):
        compat.check_private_apis()
    compat.check_private_apis.cache_clear()
