"""The table of benches/compare.sh from the JSON files of its runs.

    python3 benches/compare_table.py OUT ROUNDS table      # the Markdown table and the verdicts
    python3 benches/compare_table.py OUT ROUNDS half-rate  # half of the median session req/s

Rows that are compared with each other ran ROUNDS times, interleaved (NAME.1 ... NAME.ROUNDS);
they are reported as the median with the range of requests/s.
"""
import json
import os
import statistics
import sys

out, rounds, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)


def row(name):
    """(requests/s, p99 ms, RSS MiB, server CPU µs per request) of one run, over all kinds."""
    d = load(name)
    server = d.pop("server")
    reqs = sum(v["requests"] for v in d.values())
    rps = sum(v["rps"] for v in d.values())
    p99 = max(v["latency_us"]["p99"] for v in d.values()) / 1000
    return rps, p99, server["rss_kib"] / 1024, server["cpu_s"] / max(reqs, 1) * 1e6


def med(name):
    """Median of each column over the rounds, and the (min, max) of requests/s."""
    cols = list(zip(*(row(f"{name}.{r}") for r in range(1, rounds + 1))))
    return [statistics.median(c) for c in cols], (min(cols[0]), max(cols[0]))


if what == "half-rate":
    print(int(med("tokengate-session")[0][0] / 2))
    sys.exit(0)

rows = [
    ("nginx, TLS proxy, no auth (the ceiling)", "plain", *med("nginx-noauth")),
    ("nginx `auth_basic` (bcrypt)", "basic", row("nginx-basic-bcrypt"), None),
    ("Caddy `basicauth` (bcrypt, hash cache)", "basic", row("caddy-basicauth"), None),
    ("tokengate, session path", "session", *med("tokengate-session")),
    ("tokengate, Basic on every request", "basic", *med("tokengate-basic")),
    ("tokengate, public path (forwarding alone, no auth)", "plain", *med("tokengate-public")),
    ("tokengate, cold SOAP logins (cache off)", "login-soap", row("tokengate-login-soap-cold"), None),
]
base = rows[0][2][0]
print("| target | scenario | requests/s | p99 | server CPU per request | RSS | vs nginx no-auth |")
print("|---|---|---:|---:|---:|---:|---:|")
for label, scen, (rps, p99, rss, cpu), rng in rows:
    spread = f" ({rng[0]:,.0f}–{rng[1]:,.0f})" if rng else ""
    print(f"| {label} | {scen} | {rps:,.0f}{spread} | {p99:.1f} ms | {cpu:.0f} µs | {rss:.0f} MiB "
          f"| {rps / base:.2f}× |")
m = load("tokengate-mixed")
mrss = m.pop("server")["rss_kib"] / 1024
print(f"| tokengate, session traffic under a flood | mixed | {m['session']['rps']:,.0f} + "
      f"{m['flood']['rps']:,.0f} flood | {m['session']['latency_us']['p99'] / 1000:.1f} ms | "
      f"| {mrss:.0f} MiB | |")
z = load("tokengate-mixed-nodelay")
zrss = z.pop("server")["rss_kib"] / 1024
print(f"| the same with `failure_delay = \"0\"` | mixed | {z['session']['rps']:,.0f} + "
      f"{z['flood']['rps']:,.0f} flood | {z['session']['latency_us']['p99'] / 1000:.1f} ms | "
      f"| {zrss:.0f} MiB | |")
print()
(session, _, _, scpu), _ = med("tokengate-session")
(basic, _, _, bcpu), _ = med("tokengate-basic")
(ngx, _, _, ncpu), _ = med("nginx-noauth")
(_, _, _, pcpu), _ = med("tokengate-public")
caddy = row("caddy-basicauth")[0]


def per_round(a, b):
    """The CPU per request of row a over row b's, round by round."""
    return ", ".join(
        f"{row(f'{a}.{r}')[3] / row(f'{b}.{r}')[3]:.2f}" for r in range(1, rounds + 1)
    )


print(f"Session path: {session / ngx:.2f}× nginx without auth (median requests/s); server CPU per "
      f"request {scpu:.1f} µs against nginx's {ncpu:.1f} µs ({scpu / ncpu:.2f}× by the medians; "
      f"per round {per_round('tokengate-session', 'nginx-noauth')}).")
print(f"Forwarding alone (a public path of the same server): {pcpu:.1f} µs of CPU per request, "
      f"{pcpu / ncpu:.2f}× nginx's (per round {per_round('tokengate-public', 'nginx-noauth')}); the "
      f"session path costs {scpu / pcpu:.2f}× that (per round "
      f"{per_round('tokengate-session', 'tokengate-public')}).")
print(f"Basic path: {basic / session:.2f}× tokengate's session path (CPU per request {bcpu:.1f} µs, "
      f"{bcpu / scpu:.2f}× the session path's; per round {per_round('tokengate-basic', 'tokengate-session')}), "
      f"{basic / caddy:.1f}× Caddy's basicauth.")
print(f"Mixed: session traffic kept {m['session']['rps']:,.0f} req/s "
      f"({m['session']['rps'] / session * 100:.0f}% of the median unloaded {session:,.0f}) while the "
      f"flood ran at {m['flood']['rps']:,.0f} req/s; RSS {mrss:.0f} MiB. Without the failure delay: "
      f"{z['session']['rps']:,.0f} req/s ({z['session']['rps'] / session * 100:.0f}%) beside a flood of "
      f"{z['flood']['rps']:,.0f} req/s.")
one = load("tokengate-login-soap-1conn")["login-soap"]["latency_us"]["p50"] / 1e6
cold = load("tokengate-login-soap-cold")["login-soap"]["rps"]
cores = os.cpu_count()
print(f"Cold logins: {cold:.0f}/s; one login alone takes {one * 1000:.1f} ms (p50), so {cores} cores "
      f"allow {cores / one:.0f}/s: {cold / (cores / one) * 100:.0f}% of that (target 90%).")


def p99(name, kind):
    return statistics.median(
        load(f"{name}.{r}")[kind]["latency_us"]["p99"] for r in range(1, rounds + 1)
    ) / 1000


d = p99("upstream-direct-half", "plain")
t = p99("tokengate-session-half", "session")
n = p99("nginx-noauth-half", "plain")
print(f"At half of tokengate's session throughput, paced (median p99 of {rounds} rounds): {d:.2f} ms "
      f"to the upstream directly, {t:.2f} ms through tokengate (added {t - d:+.2f} ms; target < 1 ms), "
      f"{n:.2f} ms through nginx without auth (added {n - d:+.2f} ms).")
