"""Fail on an import that runs against the package's layering: `python scripts/check_layers.py` (part of `make check`).

Every `circuitdecomp` module belongs to a layer (its folder, or its file for top-level modules), and a layer may
import only the layers listed for it below: the table is the layering the README's Layout section describes.
Imports inside functions count as much as those at the top of a file.
"""

import ast
import sys
from pathlib import Path

PACKAGE = "circuitdecomp"
# run-dir IO, checkpoints, logging, interruption, progress and config plumbing: used by every stage, import no stage
FOUNDATION = frozenset({"frozen", "runio", "rundir", "checkpoint", "tracking", "interrupt", "progress"})
ALLOWED: dict[str, frozenset[str]] = {
    **{m: FOUNDATION for m in FOUNDATION},
    "decomp": FOUNDATION,  # SPD stands alone: never the world, targets or tasks
    "world": FOUNDATION,
    "evaluate": FOUNDATION | {"world"},  # scoring against the world's ground truth
    "features": FOUNDATION | {"evaluate"},
    "target": FOUNDATION | {"world", "config"},
    "toys": FOUNDATION | {"decomp", "evaluate", "target", "config"},
    "baselines": FOUNDATION | {"world", "evaluate", "target", "config"},  # never the pipeline
    "pipeline": FOUNDATION | {"world", "target", "decomp", "features", "evaluate", "baselines", "config"},
    "config": FOUNDATION | {"world", "target", "toys", "decomp", "features", "evaluate", "baselines"},  # config schemas only
    "cli": FOUNDATION | {"config"},
    "collect": FOUNDATION,
    "__init__": frozenset({"decomp"}),  # the package re-exports the public API
}
SCHEMA_ONLY = frozenset({"config"})  # layers that may import other layers' `config` modules and nothing else of them


def layer_of(module: str) -> str:
    """`circuitdecomp.decomp.train` -> `decomp`; `circuitdecomp.runio` -> `runio`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the package in `tree`, relative imports resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return [(line, name) for line, name in out if name == PACKAGE or name.startswith(PACKAGE + ".")]


def violations(root: Path) -> list[str]:
    """One line per import against the table, `path:line: layer imports other (allowed: ...)`."""
    found = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        module = module.removesuffix(".__init__") if path.name == "__init__.py" and path.parent != root / PACKAGE else module
        layer = layer_of(module)
        if layer not in ALLOWED:
            found.append(f"{path.relative_to(root)}:1: layer '{layer}' is not in scripts/check_layers.py's table: add it")
            continue
        for line, name in imported_modules(ast.parse(path.read_text(), str(path)), module):
            other = layer_of(name)
            schema = name.endswith(".config") or other in FOUNDATION
            if other != layer and (other not in ALLOWED[layer] or (layer in SCHEMA_ONLY and not schema)):
                allowed = ", ".join(sorted(ALLOWED[layer])) or "nothing"
                if layer in SCHEMA_ONLY and other in ALLOWED[layer]:
                    allowed = f"the `config` modules of {allowed}"
                found.append(f"{path.relative_to(root)}:{line}: {layer} imports {name} (allowed: {allowed})")
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent
    found = violations(root)
    for v in found:
        print(v)
    print(f"layering: {len(found)} import(s) against the table" if found else "layering: every import points one way")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
