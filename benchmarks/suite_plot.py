"""The suite's plot: every peer side by side, CPU per operation above, memory below.

Each peer keeps one colour (and the floors a hatch on white, so they read
as references, not servers) and one slot in every group, so a missing bar
is a peer that cannot do that workload or was skipped. CPU per operation
spans three decades (a 64 B echo to a mutual-TLS handshake), hence the log
scale; the legend sits above the panels, outside the bars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peers import PEERS

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies).
STYLE: dict[str, dict[str, Any]] = {
    "ours": {"color": "#0072B2"},
    "trio": {"color": "#E69F00"},
    "asyncio": {"color": "#009E73"},
    "uvloop": {"color": "#CC79A7"},
    "go": {"color": "#56B4E9"},
    "plain": {"color": "#999999"},
    "floor": {"color": "white", "edgecolor": "black", "hatch": "////"},
    "floor-stdlib": {"color": "white", "edgecolor": "#D55E00", "hatch": "\\\\\\\\"},
    "floor-x25519": {"color": "white", "edgecolor": "black", "hatch": "..."},
}
LABEL = {
    "ours": "ours (trio-tls-dtls)",
    "trio": "trio SSLStream / DTLSEndpoint",
    "asyncio": "asyncio, stdlib ssl",
    "uvloop": "asyncio + uvloop",
    "go": "Go crypto/tls",
    "plain": "plain trio TCP / UDP",
    "floor": "floor: OpenSSL 4.0 in memory",
    "floor-stdlib": "floor: OpenSSL 3.0 (stdlib ssl)",
    "floor-x25519": "floor: OpenSSL 4.0, X25519 client",
}


def _group_label(row: dict[str, Any]) -> str:
    if row["workload"] == "W7":
        return f"W7 {row['proto'].upper()}"
    if row["mode"] == "handshake":
        return str(row["workload"])
    size = "16 KiB" if row["size"] == 16384 else f"{row['size']} B"
    return f"{row['workload']}\n{size}"


def _bars(ax: Any, rows: list[dict[str, Any]], key: str, values: bool) -> None:
    groups: dict[str, dict[str, float]] = {}
    for r in rows:
        groups.setdefault(_group_label(r), {})
        if r["status"] == "ok" and r.get(key) and r[key] > 0:
            groups[_group_label(r)][r["peer"]] = r[key]
    slots = [p.key for p in PEERS]
    width = 0.9 / len(slots)
    for i, key_ in enumerate(slots):
        xs = [g for g, (label, values) in enumerate(groups.items()) if key_ in values]
        ys = [list(groups.values())[g][key_] for g in xs]
        if xs:
            bars = ax.bar(
                [x - 0.45 + (i + 0.5) * width for x in xs],
                ys,
                width=width * 0.92,
                linewidth=0.8,
                label=LABEL[key_],
                **STYLE[key_],
            )
            if values:
                ax.bar_label(bars, fmt="%.0f", fontsize=10, padding=2)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=11)
    ax.tick_params(axis="y", labelsize=11)
    ax.set_xlim(-0.55, len(groups) - 0.45)
    ax.grid(axis="y", alpha=0.3)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Write the PNG; False (with one line saying so) if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'trio-tls-dtls[bench]')")
        return False
    cpu_rows = [r for r in rows if r["workload"] not in ("W7", "W9")]
    mem_rows = [r for r in rows if r["workload"] == "W7"]
    panels = [p for p in ((cpu_rows, "cpu_us_per_op"), (mem_rows, "kib_per_connection")) if p[0]]
    if not panels:
        return False
    ratios = [2.2 if key.startswith("cpu") else 1 for _, key in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(11, 4.2 * len(panels) + 1.2),
        dpi=100,
        gridspec_kw={"height_ratios": ratios},
        squeeze=False,
    )
    for ax, (subset, key) in zip(axes[:, 0], panels, strict=True):
        # Values on the bars where there are few enough to read (memory).
        _bars(ax, subset, key, values=not key.startswith("cpu"))
        if key.startswith("cpu"):
            ax.set_yscale("log")
            ax.set_ylabel("server CPU per operation\n(µs, log scale)", fontsize=12)
            ax.set_title("Server CPU per handshake / round trip (lower is better)", fontsize=13)
        else:
            ax.set_ylabel("server RSS per idle\nconnection (KiB)", fontsize=12)
            ax.margins(y=0.15)  # room for the values above the bars
            ax.set_title("W7: memory per idle TLS connection / DTLS peer", fontsize=13)
    handles: dict[str, Any] = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    order = [LABEL[p.key] for p in PEERS if LABEL[p.key] in handles]
    fig.legend(
        [handles[label] for label in order],
        order,
        loc="upper center",
        ncol=3,
        fontsize=11,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 1.0 / (4.2 * len(panels) + 1.2)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
