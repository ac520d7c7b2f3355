#!/usr/bin/env python3
"""Compares two l2kv_bench_decode runs point by point: a 16-bit KV cache against an fp8 one
(--kv-cache-dtype fp8_e4m3), one kernel variant (split by default), cold L2. Prints a markdown
table: times, the fp8 speedup, each run's share of its own streaming-read ceiling, and the
issue's targets."""
import argparse
import json


def variant_result(point, kernel, prefetch):
    for r in point["results"]:
        if r["kernel"] == kernel and (prefetch is None or r["prefetch"] == prefetch) \
                and "cold_us" in r:
            return r
    return None


def point_key(point):
    return (point["model"], point["batch"], point["context"], point["block_size"],
            point["layout"])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bf16", help="l2kv_bench_decode --json of the 16-bit run")
    ap.add_argument("fp8", help="l2kv_bench_decode --json of the fp8 run")
    ap.add_argument("--variant", default="split",
                    help="KERNEL or KERNEL:PREFETCH as the runs name them (split, paged_v1:off, "
                         "paged_v1:on:1)")
    args = ap.parse_args()
    kernel, _, prefetch = args.variant.partition(":")
    prefetch = prefetch or None
    a = json.load(open(args.bf16))
    f = json.load(open(args.fp8))
    print(f"# fp8 E4M3 vs {a['dtype']} KV cache, {args.variant}, cold L2")
    print()
    print(f"Device {a['device']}, {a['date']}; read ceilings {a['read_ceiling_gbps']:.0f} and "
          f"{f['read_ceiling_gbps']:.0f} GB/s.")
    print(f"Commands: `{a['command']}` and `{f['command']}`")
    print()
    print("| model | B | S | 16-bit KV MiB | 16-bit us | fp8 us | fp8 speedup | 16-bit % ceiling | fp8 % ceiling |")
    print("|---|---|---|---|---|---|---|---|---|")
    met = total = 0
    fp8_points = {point_key(p): p for p in f["points"]}
    for pa in a["points"]:
        pf = fp8_points.get(point_key(pa))
        if pf is None:
            continue  # the runs' grids differ: compare the points both have
        ra = variant_result(pa, kernel, prefetch)
        rf = variant_result(pf, kernel, prefetch)
        if ra is None or rf is None:
            continue
        speedup = ra["cold_us"] / rf["cold_us"]
        big = pa["kv_mib"] >= 1024
        if big:
            total += 1
            met += speedup >= 1.8
        print(f"| {pa['model']} | {pa['batch']} | {pa['context']} | {pa['kv_mib']:.0f} | "
              f"{ra['cold_us']:.1f} | {rf['cold_us']:.1f} | {speedup:.2f}{' *' if big else ''} | "
              f"{100 * ra['cold_gbps'] / a['read_ceiling_gbps']:.0f} | "
              f"{100 * rf['cold_gbps'] / f['read_ceiling_gbps']:.0f} |")
    print()
    print(f"\\* points with at least 1 GiB of 16-bit KV: {met} of {total} at >= 1.8x.")


if __name__ == "__main__":
    main()
