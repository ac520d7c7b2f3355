#!/usr/bin/env python3
"""Turns l2kv_bench_decode JSON (one or more files) and sdpa_peers.py JSON into the markdown
results table and the summary against the targets of the decode-attention issue."""
import argparse
import json
import statistics


def load_points(paths):
    meta, points = [], []
    for p in paths:
        with open(p) as f:
            d = json.load(f)
        meta.append(d)
        points += [pt for pt in d["points"] if "skipped" not in pt]
    return meta, points


def result(pt, kernel, prefetch):
    for r in pt["results"]:
        if r["kernel"] == kernel and r["prefetch"] == prefetch and "cold_us" in r:
            return r
    return None


def fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bench", nargs="+", required=True)
    ap.add_argument("--peers")
    ap.add_argument("--v1-prefetch", default="on:1")
    ap.add_argument("--split-prefetch", default="on:1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    meta, points = load_points(args.bench)
    peers = {}
    peer_meta = None
    if args.peers:
        with open(args.peers) as f:
            peer_meta = json.load(f)
        for r in peer_meta["results"]:
            peers[(r["model"], r["batch"], r["context"])] = r
    ceiling = statistics.median(m["read_ceiling_gbps"] for m in meta)

    def peer(pt, name, key="cold_us"):
        r = peers.get((pt["model"], pt["batch"], pt["context"]), {}).get(name, {})
        return r.get(key)

    lines = ["# Decode attention on " + meta[0]["device"], ""]
    for m in meta:
        lines.append(f"- {m['date']}: `{m['command']}` (read ceiling {m['read_ceiling_gbps']:.0f} GB/s, "
                     f"empty kernel {m['empty_kernel_us']:.1f} µs, flush {m.get('flush', 'clean')}, {m['reps']} reps)")
    if peer_meta:
        lines.append(f"- peers: `{peer_meta['command']}` (torch {peer_meta['torch']}, flush {peer_meta.get('flush')})")
    lines += ["", "Times are medians in µs, cold L2 / warm L2. GB/s and % use the cold time and the bytes "
              "that must move (K and V once, Q and output once). `v1` = paged_v1, `pf` = prefetch "
              f"(`{args.v1_prefetch}` for paged_v1, `{args.split_prefetch}` for split).", ""]
    header = ("| layout | bs | model | B | S | KV MiB | v1 | v1+pf | pf x | v1 auto x | split | split+pf | split GB/s | "
              "% ceil | split/v1 x | cuDNN | flash | cuDNN/split x |")
    lines += [header, "|" + "---|" * header.count("|")[:-1] if False else "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
    summary = {"pct_256": [], "pct_1g": [], "vs_cudnn": [], "split_pf": [], "v1_pf": []}
    for pt in points:
        v1 = result(pt, "paged_v1", "off")
        v1p = result(pt, "paged_v1", args.v1_prefetch)
        v1a = result(pt, "paged_v1", "auto")
        auto_x = v1["cold_us"] / v1a["cold_us"] if v1 and v1a else None
        sp = result(pt, "split", "off")
        spp = result(pt, "split", args.split_prefetch)
        bytes_moved = pt["kv_mib"] * 2**20 + 4 * pt["batch"] * pt["q_heads"] * pt["head_dim"]
        gbps = bytes_moved / (sp["cold_us"] * 1e-6) / 1e9 if sp else None
        pct = 100 * gbps / ceiling if gbps else None
        cud, fla = peer(pt, "cudnn"), peer(pt, "flash")
        pf_x = v1["cold_us"] / v1p["cold_us"] if v1 and v1p else None
        sv1 = v1["cold_us"] / sp["cold_us"] if v1 and sp else None
        vs_cud = cud / sp["cold_us"] if cud and sp else None
        if pct is not None and pt["kv_mib"] >= 256:
            summary["pct_256"].append((pct, pt))
        if pct is not None and pt["kv_mib"] >= 1024:
            summary["pct_1g"].append((pct, pt))
        if vs_cud is not None:
            summary["vs_cudnn"].append((vs_cud, pt))
        if sp and spp:
            summary["split_pf"].append((sp["cold_us"] / spp["cold_us"], pt))
        if pf_x is not None:
            summary["v1_pf"].append((pf_x, pt))
        if auto_x is not None:
            summary.setdefault("v1_auto", []).append((auto_x, pt))
        cw = lambda r: "-" if r is None else f"{r['cold_us']:.1f} / {r['warm_us']:.1f}"
        lines.append(f"| {pt['layout']} | {pt['block_size']} | {pt['model']} | {pt['batch']} | {pt['context']} | "
                     f"{pt['kv_mib']:.0f} | {cw(v1)} | {cw(v1p)} | {fmt(pf_x, 2)} | {fmt(auto_x, 2)} | {cw(sp)} | {cw(spp)} | "
                     f"{fmt(gbps, 0)} | {fmt(pct)} | {fmt(sv1, 2)} | {fmt(cud)} | {fmt(fla)} | {fmt(vs_cud, 2)} |")

    def where(pt):
        return f"{pt['layout']}/bs{pt['block_size']} {pt['model']} B={pt['batch']} S={pt['context']}"

    out = ["## Summary against the targets", ""]
    if summary["pct_256"]:
        worst = min(summary["pct_256"], key=lambda x: x[0])
        below = sum(1 for p, _ in summary["pct_256"] if p < 92)
        out.append(f"- split, points with >= 256 MiB of KV: min {worst[0]:.1f} % of the read ceiling "
                   f"({where(worst[1])}); {below} of {len(summary['pct_256'])} below 92 %.")
    if summary["pct_1g"]:
        worst = min(summary["pct_1g"], key=lambda x: x[0])
        below = sum(1 for p, _ in summary["pct_1g"] if p < 95)
        out.append(f"- split, points with >= 1 GiB: min {worst[0]:.1f} % ({where(worst[1])}); "
                   f"{below} of {len(summary['pct_1g'])} below 95 %.")
    for pt in points:
        if pt["model"] == "llama3-8b" and pt["batch"] == 1 and pt["context"] == 8192:
            sp = result(pt, "split", "off")
            if sp:
                out.append(f"- split at B=1 S=8192 llama3-8b ({pt['layout']}, bs {pt['block_size']}): "
                           f"{sp['cold_us']:.1f} µs cold, {sp['warm_us']:.1f} µs warm; cuDNN {fmt(peer(pt, 'cudnn'))} µs cold.")
    if summary["vs_cudnn"]:
        slower = [(x, pt) for x, pt in summary["vs_cudnn"] if x < 1]
        worst = min(summary["vs_cudnn"], key=lambda x: x[0])
        out.append(f"- split faster than cuDNN SDPA at {len(summary['vs_cudnn']) - len(slower)} of "
                   f"{len(summary['vs_cudnn'])} points; worst cuDNN/split = {worst[0]:.2f} ({where(worst[1])}).")
    table3 = [(x, pt) for x, pt in summary["v1_pf"] if pt["batch"] == 64 and pt["context"] == 4608 and pt["block_size"] == 16]
    for x, pt in table3:
        out.append(f"- paged_v1 prefetch speedup at the Table-3 point, {where(pt)}: {x:.2f}x")
    if summary["v1_pf"]:
        best = max(summary["v1_pf"], key=lambda x: x[0])
        out.append(f"- paged_v1 prefetch: best {best[0]:.2f}x ({where(best[1])}); "
                   f"median {statistics.median(x for x, _ in summary['v1_pf']):.2f}x over {len(summary['v1_pf'])} points.")
    if summary.get("v1_auto"):
        worst = min(summary["v1_auto"], key=lambda x: x[0])
        best = max(summary["v1_auto"], key=lambda x: x[0])
        out.append(f"- paged_v1 prefetch `auto` vs off: worst {worst[0]:.2f}x ({where(worst[1])}), best {best[0]:.2f}x "
                   f"({where(best[1])}); median {statistics.median(x for x, _ in summary['v1_auto']):.2f}x.")
    if summary["split_pf"]:
        worst = min(summary["split_pf"], key=lambda x: x[0])
        best = max(summary["split_pf"], key=lambda x: x[0])
        out.append(f"- split prefetch `{args.split_prefetch}` vs off (cold): worst {worst[0]:.3f}x ({where(worst[1])}), "
                   f"best {best[0]:.3f}x ({where(best[1])}).")
    with open(args.out, "w") as f:
        f.write("\n".join(lines[:4 + len(meta) + (1 if peer_meta else 0)] + [""] + out + [""] + lines[4 + len(meta) + (1 if peer_meta else 0):]) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
