"""Print the ladder table of targets (docs/targets.md) from finished pipeline runs.

    python scripts/ladder.py planted=runs/pipeline/ladder_planted templated=runs/pipeline/ladder_templated \
        trained=runs/pipeline/ladder_trained plain=runs/pipeline/ladder_plain

Each argument is `name=run_dir`; the table has one column per run, in order, and reads only `metrics.json`.
"""

import sys
from pathlib import Path

from circuitdecomp.pipeline.report import ladder


def main(argv: list[str]) -> int:
    runs: dict[str, Path] = {}
    for arg in argv:
        name, sep, path = arg.partition("=")
        if not sep or not name or not (Path(path) / "metrics.json").exists():
            print(f"error: {arg!r} is not name=run_dir with a metrics.json in run_dir (a finished pipeline run)", file=sys.stderr)
            return 2
        runs[name] = Path(path)
    if not runs:
        print(__doc__, file=sys.stderr)
        return 2
    print(ladder(runs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
