"""Compare two result files (two cards, or before/after a change) as a markdown table.

Records are matched on (suite, layer, pass, dtype, impl, batch). speedup = time A
/ time B: above 1, B is faster. Summary rows give the geometric mean of the
speedups per pass and impl (the geometric mean, because ratios of times
multiply: a 2x gain and a 2x loss should average to 1x).
"""
from __future__ import annotations

import math
from collections import defaultdict

from .report import fmt, load_result, md_table
from .run import record_key


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def match(a: dict, b: dict) -> tuple:
    """(rows, only_in_a, only_in_b, untimed): rows are (key, time A, time B, speedup) for records timed in
    both; untimed are the keys in both files that failed (no time) in at least one."""
    times_a = {record_key(r): r.get("time_ms") for r in a["records"]}
    times_b = {record_key(r): r.get("time_ms") for r in b["records"]}
    both = [key for key in times_a if key in times_b]
    rows = [(key, times_a[key], times_b[key], times_a[key] / times_b[key])
            for key in both if times_a[key] and times_b[key]]
    untimed = [key for key in both if not (times_a[key] and times_b[key])]
    return rows, sorted(set(times_a) - set(times_b)), sorted(set(times_b) - set(times_a)), untimed


def summary(rows) -> list:
    """[(pass, impl, geomean speedup, n)] per pass and impl, then ('all', 'all', ...) over every row."""
    groups = defaultdict(list)
    for key, _, _, speedup in rows:
        groups[(key[2], key[4])].append(speedup)
    order = {p: i for i, p in enumerate(("fprop", "dgrad", "wgrad"))}
    out = [(p, i, geomean(v), len(v)) for (p, i), v in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9),
                                                                                              kv[0][1]))]
    if rows:
        out.append(("all", "all", geomean(r[3] for r in rows), len(rows)))
    return out


def _label(result: dict, path) -> str:
    return f"{result.get('device')} ({result.get('device_kind')}, {result.get('created')}, {path})"


def render_comparison(a: dict, b: dict, path_a="A", path_b="B") -> str:
    rows, only_a, only_b, untimed = match(a, b)
    out = ["# gpuconv benchmark comparison", "",
           f"- A: {_label(a, path_a)}", f"- B: {_label(b, path_b)}",
           "- speedup = time A / time B (> 1: B is faster)", ""]
    if a.get("environment", {}).get("git_commit") != b.get("environment", {}).get("git_commit"):
        out += [f"- commits: A {a.get('environment', {}).get('git_commit')}, "
                f"B {b.get('environment', {}).get('git_commit')}", ""]
    out += ["## Summary (geometric mean of speedups)", ""]
    out.append(md_table(["pass", "impl", "speedup", "records"],
                        [(p, i, fmt(g, ".3f"), n) for p, i, g, n in summary(rows)]))
    out += ["", "## Records", ""]
    out.append(md_table(["suite", "layer", "pass", "dtype", "impl", "batch", "A ms", "B ms", "speedup"],
                        [(*key, fmt(ta, ".4g"), fmt(tb, ".4g"), fmt(s, ".3f")) for key, ta, tb, s in rows]))
    if only_a or only_b or untimed:
        out += ["", f"Not compared: {len(only_a)} record(s) only in A, {len(only_b)} only in B, "
                    f"{len(untimed)} without a time (an error) in A or B."]
    return "\n".join(out) + "\n"


def compare_files(path_a, path_b) -> str:
    results = [load_result(path_a), load_result(path_b)]
    for path, result in zip((path_a, path_b), results):
        if result.get("kind") == "net":  # whole-network results have no layers to match
            raise ValueError(f"{path} is a 'bench net' result; compare takes 'bench run' results (layers)")
    return render_comparison(*results, path_a, path_b)
