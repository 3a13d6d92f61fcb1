"""Collect every run's metrics.json under the given folders into one table (markdown on stdout, CSV and a plot to files).

python scripts/collect.py runs/multirun/decompose/2026-12-06_20-13-27_tms_5-2 --metrics 'decomp/mmcs' 'decomp/ml2r*' \
    --config decomposition.seed --csv sweep.csv --plot decomposition.seed sweep.png
"""

import argparse
from pathlib import Path

from circuitdecomp.collect import collect, plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders searched recursively for metrics.json")
    parser.add_argument("--metrics", nargs="+", default=["*"], help="fnmatch patterns of metric keys (default: all)")
    parser.add_argument("--config", nargs="*", default=[], help="config keys to show, dotted (e.g. decomposition.seed)")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    parser.add_argument("--plot", nargs=2, metavar=("X", "PNG"), help="also plot every metric column against column X into PNG")
    args = parser.parse_args()
    table = collect(args.roots, args.metrics, args.config)
    print(table.markdown())
    if args.csv:
        args.csv.write_text(table.csv())
    if args.plot:
        x, png = args.plot
        plot(table, x, args.metrics).savefig(png, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
