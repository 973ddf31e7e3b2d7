"""The import contract: data flows one way through the packages, and no import cycle exists.

Read from the source (type-only imports and imports inside functions included), so a violation fails here
even where it would never run.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "callm"

# Each part, and the parts it may import. Plumbing is shared by all; a stage never imports a later one.
PLUMBING = {"errors", "files", "console", "device", "metrics", "checkpoint", "weights_folder", "video"}
ALLOWED = {
    **{name: PLUMBING for name in PLUMBING},
    "results": PLUMBING,
    "ae": PLUMBING | {"results"},
    "vlm": PLUMBING | {"results", "ae"},
    "vador": PLUMBING | {"results", "ae", "vlm"},
    "cascade": PLUMBING | {"results", "ae", "vlm", "vador"},
    "localisation": PLUMBING | {"results"},
    "clips": PLUMBING | {"results"},
    "evaluate": PLUMBING | {"results", "ae", "cascade", "localisation"},
    "scan": PLUMBING | {"results", "ae", "cascade", "clips"},
    "inspect": PLUMBING | {"results", "ae", "vlm", "vador"},
    "live": PLUMBING | {"results", "ae", "cascade", "clips"},
    "report": PLUMBING | {"results", "scan", "live"},
    "cli": PLUMBING
    | {
        "results",
        "ae",
        "vlm",
        "vador",
        "cascade",
        "evaluate",
        "localisation",
        "clips",
        "scan",
        "inspect",
        "report",
        "live",
    },
}


def part(module: str) -> str:
    """``callm.ae.train`` -> ``ae``, ``callm.files`` -> ``files``, ``callm`` -> ``__init__``."""
    return module.split(".")[1] if "." in module else "__init__"


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_imports() -> dict[str, set[str]]:
    """Every callm module -> the callm modules it imports, anywhere in its source."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("callm"):
                # ``from callm.cli import adapt`` imports the submodule callm.cli.adapt, not the package's own code.
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    graph[module].add(submodule if _is_module(submodule) else node.module)
            elif isinstance(node, ast.Import):
                graph[module].update(a.name for a in node.names if a.name.startswith("callm."))
    return graph


def test_every_part_is_in_the_contract() -> None:
    parts = {part(m) for m in module_imports()} | {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    parts |= {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert parts - {"__init__"} <= set(ALLOWED), sorted(parts - set(ALLOWED))


def test_no_part_imports_a_later_one() -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in module_imports().items()
        for target in targets
        if part(target) != part(module) and part(target) not in ALLOWED[part(module)]
    )
    assert wrong == [], "\n".join(wrong)


def test_no_import_cycle_between_modules() -> None:
    graph = module_imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)
