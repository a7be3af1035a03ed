"""``python -m bench <benchmark> [options]``."""

from __future__ import annotations

import sys

BENCHMARKS = {
    "spine": "bench.spine",
    "tiers": "bench.tiers",
    "filters": "bench.filters",
    "text": "bench.text",
    "crash": "bench.crash",
    "load": "bench.load",
    "fairness": "bench.fairness",
    "tenants": "bench.tenants",
    "ingest": "bench.ingest",
    "compare": "bench.compare",
    "shards": "bench.shards",
    "faults": "bench.faults",
    "console": "bench.console",
    "embed": "bench.embed",
    "serve": "bench.serve",
    "scale": "bench.scale",
    "processes": "bench.processes",
    "graphview": "bench.graphview",
}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(BENCHMARKS[sys.argv[1]])
    return int(module.main(sys.argv[2:]))


if __name__ == "__main__":
    sys.exit(main())
