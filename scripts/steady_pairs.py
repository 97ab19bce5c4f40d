#!/usr/bin/env python3
"""Steady-state training throughput from an `align train` run's log.jsonl.

    python3 scripts/steady_pairs.py RUN_DIR/log.jsonl [FROM_STEP [TO_STEP]]

Pairs per second between two logged steps (default 10 and the last), so start-up (data
generation, the first steps' allocations) does not count. Compare with
`python3 scripts/bench_reference.py dual --threads 2`, run interleaved in the same sitting.
"""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
elapsed = {r["step"]: r["elapsed_s"] for r in rows if "elapsed_s" in r}
first = int(sys.argv[2]) if len(sys.argv) > 2 else 10
last = int(sys.argv[3]) if len(sys.argv) > 3 else max(elapsed)
batch = int(rows[0].get("batch_size", 64)) if rows else 64
print(f"steps {first}..{last}: {(last - first) * batch / (elapsed[last] - elapsed[first]):.1f} pairs/s")
