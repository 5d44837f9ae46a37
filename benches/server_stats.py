"""Adds the server's side of one load-test run to its JSON: RSS (KiB) and CPU seconds.

    python3 benches/server_stats.py RUN.json RSS_KIB CPU_TICKS CLK_TCK
"""
import json
import sys

path, rss, ticks, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(path) as f:
    d = json.load(f)
d["server"] = {"rss_kib": rss, "cpu_s": ticks / hz}
with open(path, "w") as f:
    json.dump(d, f)
