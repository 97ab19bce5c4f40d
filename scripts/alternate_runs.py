#!/usr/bin/env python3
"""Alternates whole programs in rounds and compares what they print, line label by label.

    python3 scripts/alternate_runs.py ROUNDS CMD_A... -- CMD_B... [-- CMD_C...]

Each round runs every command once, in order. A printed line is split into its label (the
words) and its numbers; a line with several numbers gives labels `label#0`, `label#1`, ...
After each round the script prints every label's values, and at the end, per label, the
median over rounds of each command's value divided by the last command's value in the same
round (min..max beside it). With times (ms), a ratio above 1 means the last command is
faster; with rates (GFLOP/s), below 1.

For comparisons that need whole programs (PyTorch's conv and row kernels against our
`conv_bench` / `rows_bench`): on this shared host the speed drifts within seconds, so
programs run one after the other in separate phases compare badly; rounds of A, B, A, B...
spread the drift over both. Pin both to one CPU for one-thread comparisons, e.g.

    python3 scripts/alternate_runs.py 5 \\
        taskset -c 1 python3 scripts/bench_reference.py conv --threads 1 --runs 5 -- \\
        taskset -c 1 target/release/examples/conv_bench --threads 1 --runs 5
"""
import re
import statistics
import subprocess
import sys


def parse(output):
    number = re.compile(r"^-?\d+\.\d+$")
    values = {}
    for line in output.splitlines():
        tokens = line.split()
        nums = [float(t) for t in tokens if number.match(t)]
        if not nums:
            continue
        label = " ".join(t for t in tokens if not number.match(t))
        if len(nums) == 1:
            values[label] = nums[0]
        else:
            for i, v in enumerate(nums):
                values[f"{label}#{i}"] = v
    return values


def main():
    rounds = int(sys.argv[1])
    commands, current = [], []
    for a in sys.argv[2:]:
        if a == "--":
            commands.append(current)
            current = []
        else:
            current.append(a)
    commands.append(current)
    if len(commands) < 2 or any(not c for c in commands):
        sys.exit(__doc__)
    results = []
    for r in range(rounds):
        row = [parse(subprocess.run(c, capture_output=True, text=True).stdout) for c in commands]
        results.append(row)
        labels = list(row[-1].keys())
        print(f"round {r}: " + "; ".join(
            f"{l}: " + "/".join(f"{v.get(l, float('nan')):.1f}" for v in row) for l in labels), flush=True)
    print("summary: each command over the last, per label: median of the per-round ratios [min..max]")
    for label in results[0][-1].keys():
        parts = []
        for j in range(len(commands) - 1):
            ratios = [row[j][label] / row[-1][label] for row in results if label in row[-1] and label in row[j]]
            if ratios:
                parts.append(f"cmd{j}: med {statistics.median(ratios):.3f} [{min(ratios):.3f}..{max(ratios):.3f}]")
        print(f"  {label:28s} " + "  ".join(parts))


if __name__ == "__main__":
    main()
