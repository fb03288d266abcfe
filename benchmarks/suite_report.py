"""The benchmark suite's tables, targets, docs section and plot (from its result rows).

A row is one server (or floor) in one workload at one size, with a
``status``: ``ok`` (measured), ``n/a`` (that peer cannot do the workload,
e.g. asyncio and DTLS), or ``skipped`` (it could, but is not available on
this machine, e.g. no ``go``). Every table shows those words rather than
an empty cell. Ratios compare server CPU per operation (W7: KiB per idle
connection) with the best Python peer (trio, asyncio, uvloop; for DTLS,
trio's ``DTLSEndpoint``), with the OpenSSL 4.0 floor (the library under
ours, in memory, no sockets), and with the plain trio echo: below 1 is
better.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peers import PEERS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS_PAGE = ROOT / "docs" / "performance.rst"
DOCS_PLOT = ROOT / "docs" / "_static" / "bench-latest.png"
BEGIN, END = ".. BEGIN SUITE RESULTS", ".. END SUITE RESULTS"
SHORT = {
    "ours": "ours",
    "trio": "trio",
    "asyncio": "asyncio",
    "uvloop": "uvloop",
    "go": "Go",
    "plain": "plain",
    "floor": "floor 4.0",
    "floor-stdlib": "floor 3.0",
    "floor-x25519": "floor X25519",
}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b and a > 0 and b > 0 else None


def add_ratios(group: list[dict[str, Any]], key: str = "cpu_us_per_op") -> None:
    """Ratios within one workload and size: to the best Python peer, the floor, plain."""
    prefix = key.split("_")[0]
    ok = {r["peer"]: r for r in group if r["status"] == "ok" and r.get(key)}
    pythons = [r for r in ok.values() if r["python"]]
    best = min(pythons, key=lambda r: r[key]) if pythons else None
    for row in group:
        if row["status"] != "ok":
            continue
        value = row.get(key)
        row["best_python"] = best["server"] if best else None
        row[f"{prefix}_vs_best_python"] = _ratio(value, best[key]) if best else None
        for ref in ("floor", "plain"):
            other = ok.get(ref)
            row[f"{prefix}_vs_{ref}"] = _ratio(value, other[key]) if other else None


def _find(rows: list[dict[str, Any]], workload: str, peer: str, **match: Any) -> Any:
    for row in rows:
        mine = (row["workload"], row["peer"]) == (workload, peer) and row["status"] == "ok"
        if mine and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(target, measured, met?, note) for each target of issue 13 this run can evaluate."""
    out: list[tuple[str, str, str, str]] = []

    def check(label: str, ours: Any, base: Any, limit: float, key: str = "cpu_us_per_op") -> None:
        if not (ours and base and ours.get(key) and base.get(key)):
            return
        ratio = ours[key] / base[key]
        unit = "KiB" if key.startswith("kib") else "µs"
        note = f"ours {ours[key]:,.1f} vs {base['server']} {base[key]:,.1f} {unit}"
        out.append((label, f"{ratio:.2f}x", "met" if ratio <= limit else "missed", note))

    def best_of(workload: str, peers: tuple[str, ...], **match: Any) -> Any:
        found = [r for p in peers if (r := _find(rows, workload, p, **match))]
        found = [r for r in found if r.get("cpu_us_per_op")]
        return min(found, key=lambda r: r["cpu_us_per_op"]) if found else None

    for w in ("W1", "W2"):
        ours = _find(rows, w, "ours")
        what = "handshake" if w == "W1" else "mTLS handshake"
        check(f"{w} {what} <= 1.0x best of asyncio, uvloop", ours,
              best_of(w, ("asyncio", "uvloop")), 1.0)  # fmt: skip
        check(f"{w} {what} <= 1.3x the OpenSSL 4.0 floor", ours, _find(rows, w, "floor"), 1.3)
    ours3 = _find(rows, "W3", "ours", size=64)
    check("W3 64 B round trip <= 1.0x asyncio", ours3, _find(rows, "W3", "asyncio", size=64), 1.0)
    check("W3 64 B round trip <= 1.2x plain TCP", ours3, _find(rows, "W3", "plain", size=64), 1.2)
    check("W4 16 KiB round trip <= 1.0x asyncio", _find(rows, "W4", "ours"),
          _find(rows, "W4", "asyncio"), 1.0)  # fmt: skip
    ours5 = _find(rows, "W5", "ours")
    check("W5 DTLS handshake <= 0.6x trio DTLSEndpoint", ours5, _find(rows, "W5", "trio"), 0.6)
    check("W5 DTLS handshake <= 1.1x our W1", ours5, _find(rows, "W1", "ours"), 1.1)
    for size in (64, 1000):
        check(f"W6 {size} B round trip <= 1.3x plain UDP", _find(rows, "W6", "ours", size=size),
              _find(rows, "W6", "plain", size=size), 1.3)  # fmt: skip
    kib = "kib_per_connection"
    check("W7 RSS per idle TLS connection <= trio SSLStream",
          _find(rows, "W7", "ours", proto="tls"), _find(rows, "W7", "trio", proto="tls"), 1.0,
          kib)  # fmt: skip
    dtls = _find(rows, "W7", "ours", proto="dtls")
    if dtls and dtls.get(kib):
        ok = "met" if dtls[kib] <= 70 else "missed"
        out.append(("W7 RSS per idle DTLS peer <= 70 KiB", f"{dtls[kib]:.1f} KiB", ok, ""))
    check("W8 resumed handshake <= 0.5x our W1", _find(rows, "W8", "ours"),
          _find(rows, "W1", "ours"), 0.5)  # fmt: skip
    one, two = (
        next((r for r in rows if r.get("server") == f"ours-tls-workers{n}"), None) for n in (1, 2)
    )
    if one and two and one.get("rate") and two.get("rate"):
        ratio = two["rate"] / one["rate"]
        note = f"{one['rate']:,.0f} vs {two['rate']:,.0f}/s; the load client shares the cores"
        ok = "met" if ratio >= 1.7 else "missed"
        out.append(("W9 --workers 2 handshakes/s >= 1.7x one worker", f"{ratio:.2f}x", ok, note))
    return out


# -- tables -------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1, missing: str = "n/a") -> str:
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _label(row: dict[str, Any]) -> str:
    if row["workload"] == "W7":
        return f"W7 {row['proto'].upper()} KiB"
    if row["mode"] == "handshake":
        return str(row["workload"])
    size = "16 KiB" if row["size"] == 16384 else f"{row['size']} B"
    return f"{row['workload']} {size}"


def matrix(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Workloads down, peers across: server CPU µs per operation (W7: KiB), at a glance."""
    head = ["workload", *(SHORT[p.key] for p in PEERS), "÷ best Python", "÷ floor"]
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row["workload"] != "W9":
            groups.setdefault(_label(row), {})[row["peer"]] = row
    order = list(groups)
    body = []
    for label in sorted(groups, key=lambda g: (g[:2], order.index(g))):
        members = groups[label]
        key = "kib_per_connection" if label.startswith("W7") else "cpu_us_per_op"
        prefix = key.split("_")[0]
        cells = [label]
        for peer in PEERS:
            member = members.get(peer.key)
            if member is None or member["status"] != "ok":
                cells.append(member["status"] if member else "n/a")
            else:
                value = member.get(key)
                cells.append(_fmt(value, 0 if (value or 0) >= 100 else 1, "failed"))
        ours = members.get("ours", {})
        best = ours.get("best_python")
        ratio = ours.get(f"{prefix}_vs_best_python")
        cells.append(f"{_fmt(ratio, 2)} ({best})" if ratio is not None else "n/a")
        cells.append(_fmt(ours.get(f"{prefix}_vs_floor"), 2))
        body.append(cells)
    return head, body


def _measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["workload"] != "W7" and r["status"] == "ok"]


def _server(r: dict[str, Any]) -> str:
    if r["workload"] == "W8":
        return f"{r['server']} ({r['resumed']}/{r['ops']} resumed)"
    if r["workload"] == "W9" and r.get("rate_vs_one_worker"):
        return f"{r['server']} ({r['rate_vs_one_worker']:.2f}x 1 worker)"
    return str(r["server"])


def detail(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Every measured row of W1..W6, W8, W9: the server's CPU and its ratios."""
    head = ["workload", "server", "CPU µs/op", "vs best Python", "vs floor", "vs plain"]
    body = [
        [
            _label(r),
            _server(r),
            _fmt(r["cpu_us_per_op"]),
            _fmt(r.get("cpu_vs_best_python"), 2),
            _fmt(r.get("cpu_vs_floor"), 2),
            _fmt(r.get("cpu_vs_plain"), 2),
        ]
        for r in _measured(rows)
    ]
    return head, body


def client_view(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The same rows as the load client saw them (the floors have no client)."""
    head = ["workload", "server", "rate (ops/s)", "MB/s", "p50 / p99 µs", "errors"]
    body = []
    for r in _measured(rows):
        if r.get("p50_us") is None:
            continue
        body.append(
            [
                _label(r),
                _server(r),
                _fmt(r.get("rate"), 0),
                _fmt(r.get("mb_per_s"), 2) if r["mode"] != "handshake" else "n/a",
                f"{_fmt(r['p50_us'], 0)} / {_fmt(r['p99_us'], 0)}",
                str(r.get("errors", 0)),
            ]
        )
    return head, body


def libraries(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Which library each server ran on and what it negotiated (once per pair)."""
    head = ["server", "library", "negotiated"]
    seen: dict[tuple[str, str, str], None] = {}
    for r in _measured(rows):
        seen[(str(r["server"]), r.get("library") or "n/a", r.get("negotiated") or "n/a")] = None
    return head, [list(key) for key in seen]


def memory(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["", "server", "library", "idle connections", "RSS before MiB", "RSS after MiB",
            "KiB per connection", "vs best Python", "vs floor"]  # fmt: skip
    body = [
        [
            r["proto"].upper(),
            r["server"],
            r.get("library") or "n/a",
            str(r["connections"]),
            _fmt(r["rss_before_mib"]),
            _fmt(r["rss_after_mib"]),
            _fmt(r["kib_per_connection"], 1, "failed"),
            _fmt(r.get("kib_vs_best_python"), 2),
            _fmt(r.get("kib_vs_floor"), 2),
        ]
        for r in rows
        if r["workload"] == "W7" and r["status"] == "ok"
    ]
    return head, body


def markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def rst(head: list[str], body: list[list[str]]) -> str:
    head = [h or "\\" for h in head]  # an empty heading would end an RST simple table
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    rule = "  ".join("=" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [rule, fmt.format(*head), rule]
    lines += [fmt.format(*row) for row in body]
    lines.append(rule)
    return "\n".join(line.rstrip() for line in lines)


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['os']}; Python "
        f"{machine['python']}, trio {machine['trio']}, pyOpenSSL {machine['pyopenssl']} on "
        f"{machine['openssl']}; stdlib ssl on {machine['stdlib_ssl']}; Go: {machine['go']}"
    )


def legend() -> list[str]:
    """What each column of the matrix is."""
    what = {
        "ours": "our ``Service`` (TLS only / DTLS only), default settings",
        "trio": "``trio.SSLStream`` over ``trio.serve_tcp`` (stdlib ssl); for DTLS, "
        "``trio.DTLSEndpoint`` (pyOpenSSL)",
        "asyncio": "an ``asyncio.Protocol`` echo with stdlib ssl",
        "uvloop": "the same on uvloop's event loop",
        "go": "``benchmarks/go``, Go's crypto/tls, one goroutine per connection",
        "plain": "trio TCP / UDP echo without TLS (the ceiling; a UDP echo keeps nothing "
        "per peer, so it has no W7 figure)",
        "floor": "OpenSSL's own cost: our engines on pyOpenSSL's OpenSSL 4.0, in memory, "
        "server side only (the library under ours and trio's DTLSEndpoint)",
        "floor-stdlib": "the same on the system's OpenSSL 3.0 via stdlib ``ssl`` (the library "
        "under trio's SSLStream, asyncio and uvloop)",
        "floor-x25519": "the OpenSSL 4.0 floor with a client that offers only X25519, the "
        "group the stdlib and Go peers negotiate (4.0 and our client prefer X25519MLKEM768); "
        "handshakes only, as records do not depend on the group",
    }
    return [f"* **{SHORT[p.key]}**: {what[p.key]}." for p in PEERS]


def write_outputs(result: dict[str, Any], out: Path, update_docs: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = result["rows"]
    goals = [list(t) for t in result["targets"]]
    goal_head = ["target", "measured", "result", "note"]
    settings = result["settings"]
    skipped = "; ".join(f"{k} skipped: {why}" for k, why in settings["skipped"].items())
    tables = [
        matrix(rows),
        detail(rows),
        client_view(rows),
        libraries(rows),
        memory(rows),
        (goal_head, goals),
    ]
    md = "\n\n".join(
        [
            f"Machine: {machine_line(result['machine'])}",
            f"Run: {result['run']} ({settings['pinning']}{'; ' + skipped if skipped else ''})",
            *(markdown(head, body) for head, body in tables if body),
        ]
    )
    (out / "latest.md").write_text(md + "\n")
    print("\n" + md)
    if not update_docs:
        return
    from suite_plot import plot

    plotted = plot(rows, DOCS_PLOT)
    note = ""
    if settings["rounds"] < 2 or settings["duration"] < 3:
        note = (
            f"A short run ({settings['rounds']} turn(s) of {settings['duration']:g} s per "
            "server): noisy; ``nox -s bench`` makes the full one."
        )
    section = [
        BEGIN,
        "",
        f"Measured {result['date']} on: {machine_line(result['machine'])}.",
        f"Run: ``{result['run']}``; {settings['pinning']}."
        + (f" {skipped.replace('`', '``')}." if skipped else ""),
        *([note] if note else []),
        "",
    ]
    captions = [
        "Server CPU per operation in µs (W7: server RSS per idle connection in KiB); lower is "
        "better. *n/a*: the peer cannot do that workload; *skipped*: it could, but is not "
        "available on this machine. The last two columns divide ours by the best Python peer "
        "(named) and by the OpenSSL 4.0 floor.",
        "Every measured row, server CPU per operation and its ratios:",
        "The same rows as the load client saw them (the floors have no client):",
        "The library under each server, and the protocol and key exchange it negotiated:",
        "W7, server RSS per idle connection:",
        "Targets (server CPU per operation unless stated):",
    ]
    for caption, (head, body) in zip(captions, tables, strict=True):
        if body:
            section += [caption, "", rst(head, [[c or "n/a" for c in r] for r in body]), ""]
            if head[0] == "workload" and head[1] == "ours":
                section += [*legend(), ""]
    if plotted:
        section += [
            f".. image:: _static/{DOCS_PLOT.name}",
            "   :alt: server CPU per operation and memory per idle connection, every peer",
            "",
        ]
    section.append(END)
    text = DOCS_PAGE.read_text()
    if BEGIN in text and END in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + "\n".join(section) + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    DOCS_PAGE.write_text(text)
    print(f"updated {DOCS_PAGE}" + (f" and {DOCS_PLOT}" if plotted else ""))
