"""Collect every run's metrics.json under the given folders into one table (markdown on stdout, CSV to a file).

python scripts/collect.py runs/multirun/decompose/2026-11-25_02-53-10 --metrics 'decomp/mmcs' 'decomp/ml2r*' \
    --config decomposition.seed --csv sweep.csv
"""

import argparse
from pathlib import Path

from circuitdecomp.collect import collect


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders searched recursively for metrics.json")
    parser.add_argument("--metrics", nargs="+", default=["*"], help="fnmatch patterns of metric keys (default: all)")
    parser.add_argument("--config", nargs="*", default=[], help="config keys to show, dotted (e.g. decomposition.seed)")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    args = parser.parse_args()
    table = collect(args.roots, args.metrics, args.config)
    print(table.markdown())
    if args.csv:
        args.csv.write_text(table.csv())


if __name__ == "__main__":
    main()
