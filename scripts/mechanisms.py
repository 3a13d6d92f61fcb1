"""Re-run the target's mechanism checks (target/mechanisms.py) on finished runs, with the current code.

    python scripts/mechanisms.py runs/pipeline/<run> [more run dirs] [--write]

Prints `target/mechanisms/*` for each run; `--write` also merges them into the run's metrics.json (other keys are
kept). Useful for runs made before a check existed.
"""

import sys
from pathlib import Path

from circuitdecomp.runio import update_metrics
from circuitdecomp.target.mechanisms import mechanism_metrics
from circuitdecomp.target.run import load_target_run


def main(argv: list[str]) -> int:
    write = "--write" in argv
    dirs = [Path(a) for a in argv if a != "--write"]
    missing = [str(d) for d in dirs if not (d / "target.safetensors").exists()]
    if not dirs or missing:
        print(f"error: no target.safetensors in {missing}" if missing else __doc__, file=sys.stderr)
        return 2
    for d in dirs:
        world, model = load_target_run(d)
        metrics = mechanism_metrics(model, world)
        print(d)
        for k, v in metrics.items():
            print(f"  {k} {v:.4f}")
        if write:
            update_metrics(d, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
