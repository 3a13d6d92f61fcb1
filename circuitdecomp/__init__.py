"""circuitdecomp: circuit-first weight decomposition (SPD) and ground-truth checks.

`from circuitdecomp import decompose, Decomposition, DecompositionConfig` — imported lazily so that
`import circuitdecomp` stays cheap.
"""

from typing import Any

__all__ = ["decompose", "Decomposition", "DecompositionConfig"]


def __getattr__(name: str) -> Any:
    if name in ("decompose", "Decomposition"):
        from circuitdecomp.decomp import api

        return getattr(api, name)
    if name == "DecompositionConfig":
        from circuitdecomp.decomp.config import DecompositionConfig

        return DecompositionConfig
    raise AttributeError(f"module 'circuitdecomp' has no attribute {name!r}")
