#!/usr/bin/env python3
"""Fits the split planner's cost constants (SplitPlanConfig) to measured slice lengths.

Input: l2kv_bench_decode --json files named <prefix>_<kv>_t<T>.json, where T is the forced
slice length (--split-tiles T; 0 = the planner's own choice) and <kv> is auto or fp8_e4m3.
For every point the best measured slice length sets the bar; a cost model's regret at a point
is the time of the slice length it picks over that best time. The script prints the regret of
the planner's own runs (t0), then grid-searches the costs (per-block overhead, merge costs,
fp8 tile cost) for the lowest mean regret and prints it with the points it misses by > 5 %.

The cost model is SplitPlanConfig's: a slice costs tiles * tile_cost + overhead, the last
slice of a split pair also merge_fixed + splits * group * merge_per_partial_head; the plan's
cost is the makespan of its slices on the resident slots. The makespan is approximated here
(max(longest slice, waves * mean slice)); split_plan.cpp runs the greedy schedule itself.
"""
import argparse
import glob
import json
import math
import os
import re
import statistics

MODELS = {"llama2-7b": (32, 1), "llama3-8b": (8, 4), "qwen2.5-7b": (4, 7),
          "qwen2.5-14b": (8, 5)}  # (KV heads, query heads per KV head)
SLOTS = {"auto": 264, "fp8_e4m3": 396}  # resident thread blocks on 132 SMs


def load(directory):
    forced, planner = {}, {}
    for path in glob.glob(os.path.join(directory, "*_t*.json")):
        m = re.match(r".*_(auto|fp8_e4m3)_t(\d+)\.json$", path)
        if not m:
            continue
        kv, t = m.group(1), int(m.group(2))
        for p in json.load(open(path))["points"]:
            r = [r for r in p["results"] if r["kernel"] == "split" and "cold_us" in r]
            if not r:
                continue
            key = (kv, p["model"], p["batch"], p["context"])
            if t == 0:
                planner[key] = (r[0]["cold_us"], p["split_tiles_per_slice"])
                continue
            tiles = math.ceil(p["context"] / 64)
            each = math.ceil(tiles / math.ceil(tiles / t))  # the slice length t amounts to
            times = forced.setdefault(key, {})
            times[each] = min(times.get(each, math.inf), r[0]["cold_us"])
    return forced, planner


def choose(key, candidates, costs):
    kv, model, batch, context = key
    heads, group = MODELS[model]
    tiles, pairs, slots = math.ceil(context / 64), batch * heads, SLOTS[kv]
    tile_cost = costs["tc"] if kv == "fp8_e4m3" else 1.0
    if pairs >= 4 * slots:  # the planner keeps whole sequences
        return tiles if tiles in candidates else max(candidates)

    def cost(each):
        count = math.ceil(tiles / each)
        each = math.ceil(tiles / count)
        count = math.ceil(tiles / each)
        merge = costs["mf"] + count * group * costs["mp"] if count > 1 else 0.0
        slices = [min(each, tiles - i * each) * tile_cost + costs["o"] +
                  (merge if i == count - 1 else 0.0) for i in range(count)]
        n, total = count * pairs, sum(slices) * pairs
        return max(slices) if n <= slots else max(max(slices), math.ceil(n / slots) * total / n)

    return min(candidates, key=lambda each: (cost(each), -each))


def regrets(forced, kv, costs, report=False):
    out = []
    for key in sorted(k for k in forced if k[0] == kv):
        times = forced[key]
        best = min(times.values())
        pick = choose(key, times, costs)
        out.append(times[pick] / best)
        if report and out[-1] > 1.05:
            print(f"  {key}: picks {pick} tiles ({times[pick]:.1f} us), best "
                  f"{min(times, key=times.get)} ({best:.1f} us)")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", help="folder of the sweep's JSON files")
    args = ap.parse_args()
    forced, planner = load(args.directory)
    for kv in SLOTS:
        r = [forced[k].get(c, t) / min(forced[k].values())
             for k, (t, c) in planner.items() if k[0] == kv and k in forced]
        if r:
            print(f"{kv}: the planner's runs (t0): mean regret {statistics.mean(r):.4f}, "
                  f"max {max(r):.3f} over {len(r)} points")
    best = None
    for o in (1, 1.5, 2, 3, 4, 6):
        for mf in (0, 0.5, 1, 2):
            for mp in (0, 1 / 64, 1 / 32, 1 / 16):
                for tc in (0.5, 0.6, 0.75, 1.0):
                    costs = {"o": o, "mf": mf, "mp": mp, "tc": tc}
                    r = {kv: regrets(forced, kv, costs) for kv in SLOTS}
                    for kv in SLOTS:
                        if r[kv] and (best is None or kv not in best or
                                      statistics.mean(r[kv]) < best[kv][0]):
                            best = best or {}
                            best[kv] = (statistics.mean(r[kv]), max(r[kv]), costs)
    for kv, (mean, worst, costs) in best.items():
        print(f"{kv}: best costs {costs}: mean regret {mean:.4f}, max {worst:.3f}")
        regrets(forced, kv, costs, report=True)


if __name__ == "__main__":
    main()
