#!/usr/bin/env python3
"""A/B comparison of l2kv_bench_decode runs of the split kernel: --before and --after each
take one or more --json files of the same grid (repeated runs; the best cold time of each
point counts). Prints the geometric-mean speedup (before / after) over all points, the spread
between repeated before runs (the noise), and the points whose planned slice length differs,
worst and best first."""
import argparse
import json
import statistics


def load(path):
    out = {}
    for p in json.load(open(path))["points"]:
        r = [r for r in p["results"] if r["kernel"] == "split" and "cold_us" in r]
        if r:
            key = (p["model"], p["batch"], p["context"], p["block_size"], p["layout"])
            out[key] = (r[0]["cold_us"], p.get("split_tiles_per_slice"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--before", nargs="+", required=True)
    ap.add_argument("--after", nargs="+", required=True)
    ap.add_argument("--show", type=int, default=6, help="changed points to list at each end")
    args = ap.parse_args()
    before = [load(p) for p in args.before]
    after = [load(p) for p in args.after]
    keys = [k for k in after[0] if all(k in run for run in before + after)]
    speedups, changed, spread = [], [], []
    for k in keys:
        b = [run[k][0] for run in before]
        a = min(run[k][0] for run in after)
        speedups.append(min(b) / a)
        spread.append(max(b) / min(b))
        if before[0][k][1] != after[0][k][1]:
            changed.append((min(b) / a, k, before[0][k][1], after[0][k][1], min(b), a))
    print(f"{len(keys)} points: geometric-mean speedup {statistics.geometric_mean(speedups):.4f} "
          f"(before / after, best of {len(before)} and {len(after)} runs)")
    if len(before) > 1:
        print(f"spread of the before runs: median {statistics.median(spread):.4f}, "
              f"max {max(spread):.3f}")
    if changed:
        changed.sort()
        s = [c[0] for c in changed]
        print(f"{len(changed)} points with another slice length: mean speedup "
              f"{statistics.mean(s):.4f}, min {min(s):.3f}, max {max(s):.3f}")
        shown = changed[:args.show] + changed[-args.show:] if len(changed) > 2 * args.show \
            else changed
        for speedup, k, tb, ta, us_b, us_a in shown:
            print(f"  {speedup:.3f}x  {k[0]} B={k[1]} S={k[2]}: {tb} -> {ta} tiles, "
                  f"{us_b:.1f} -> {us_a:.1f} us")


if __name__ == "__main__":
    main()
