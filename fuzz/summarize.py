#!/usr/bin/env python3
"""Summarizes libFuzzer runs of scripts/fuzz.sh: one markdown row per log with the target,
executions, seconds, executions per second, inputs added, peak memory and whether the run ended
on a crash, hang or out-of-memory report. Usage: fuzz/summarize.py LOG..."""
import re
import sys


def summarize(path):
    text = open(path, errors="replace").read()
    target = re.search(r"== fuzz_(\w+)", text)
    done = re.search(r"Done (\d+) runs in (\d+) second", text)
    stat = dict(re.findall(r"stat::(\w+):\s+(\d+)", text))
    failure = re.search(r"ERROR: (libFuzzer: \S+|AddressSanitizer: \S+|UndefinedBehaviorSanitizer)|"
                        r"runtime error: .*", text)
    return {
        "target": target.group(1) if target else path,
        "runs": int(stat.get("number_of_executed_units", done.group(1) if done else 0)),
        "seconds": int(done.group(2)) if done else None,
        "per_second": int(stat.get("average_exec_per_sec", 0)),
        "new": int(stat.get("new_units_added", 0)),
        "rss": int(stat.get("peak_rss_mb", 0)),
        "failure": failure.group(0) if failure else "none",
    }


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("| target | executions | seconds | exec/s | inputs added | peak RSS MB | crash, hang or report |")
    print("|---|---|---|---|---|---|---|")
    for path in sys.argv[1:]:
        s = summarize(path)
        print(f"| {s['target']} | {s['runs']:,} | {s['seconds']} | {s['per_second']:,} | "
              f"{s['new']:,} | {s['rss']} | {s['failure']} |")


if __name__ == "__main__":
    main()
