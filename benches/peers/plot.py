#!/usr/bin/env python3
"""Plot of scripts/bench-peers output: CPU per bidirectional call-second and p99 one-way
latency against N, for sbc (`loadgen calls --out`) and rtpengine (benches/peers/rtpengine/
bench.py --out). Writes a self-contained SVG with the standard library only (no network,
no matplotlib).

    python3 benches/peers/plot.py --sbc target/bench-peers/sbc-*.jsonl \
        --rtpengine target/bench-peers/rtpengine-*.jsonl --out docs/peers.svg

Several runs of the same N are reduced to their median.
"""
import argparse
import json
import statistics
from xml.sax.saxutils import escape


def load(paths):
    out = []
    for p in paths:
        with open(p) as f:
            out += [json.loads(l) for l in f if l.strip()]
    return out


def series(records, value):
    by_n = {}
    for r in records:
        v = value(r)
        if v is not None:
            by_n.setdefault(r["calls"], []).append(v)
    return sorted((n, statistics.median(vs)) for n, vs in by_n.items())


def nice_max(v):
    if v <= 0:
        return 1.0
    m = 10 ** len(str(int(v))) / 10
    for k in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if k * m >= v:
            return k * m
    return v


def panel(x0, y0, w, h, title, ylabel, lines, xs_all):
    """One chart: lines is [(label, colour, dash, [(n, v)])]."""
    out = []
    xmax = nice_max(max(xs_all) * 1.05)
    ymax = nice_max(max([v for _, _, _, pts in lines for _, v in pts] + [0.001]) * 1.1)
    sx = lambda n: x0 + n / xmax * w
    sy = lambda v: y0 + h - v / ymax * h
    out.append('<text x="%g" y="%g" font-size="14" font-weight="bold">%s</text>' % (x0, y0 - 12, escape(title)))
    out.append('<rect x="%g" y="%g" width="%g" height="%g" fill="none" stroke="#888"/>' % (x0, y0, w, h))
    for i in range(6):
        v = ymax * i / 5
        y = sy(v)
        out.append('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="#eee"/>' % (x0, y, x0 + w, y))
        out.append('<text x="%g" y="%g" font-size="11" text-anchor="end">%s</text>' % (x0 - 5, y + 4, "%g" % round(v, 3)))
    for i in range(6):
        n = xmax * i / 5
        out.append('<text x="%g" y="%g" font-size="11" text-anchor="middle">%g</text>' % (sx(n), y0 + h + 15, round(n)))
    out.append('<text x="%g" y="%g" font-size="12" text-anchor="middle">concurrent bidirectional calls (N)</text>' % (x0 + w / 2, y0 + h + 32))
    out.append('<text x="%g" y="%g" font-size="12" text-anchor="middle" transform="rotate(-90 %g %g)">%s</text>'
               % (x0 - 45, y0 + h / 2, x0 - 45, y0 + h / 2, escape(ylabel)))
    for k, (label, colour, dash, pts) in enumerate(lines):
        if not pts:
            continue
        path = " ".join("%s%g,%g" % ("M" if i == 0 else "L", sx(n), sy(v)) for i, (n, v) in enumerate(pts))
        out.append('<path d="%s" fill="none" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>' % (path, colour, dash))
        for n, v in pts:
            out.append('<circle cx="%g" cy="%g" r="3.5" fill="%s"><title>%s N=%d: %g</title></circle>'
                       % (sx(n), sy(v), colour, escape(label), n, round(v, 3)))
        ly = y0 + 14 + 16 * k
        out.append('<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>'
                   % (x0 + 10, ly - 4, x0 + 30, ly - 4, colour, dash))
        out.append('<text x="%g" y="%g" font-size="11">%s</text>' % (x0 + 35, ly, escape(label)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sbc", nargs="+", required=True, help="JSON lines of loadgen calls --out")
    ap.add_argument("--rtpengine", nargs="+", required=True, help="JSON lines of bench.py --out")
    ap.add_argument("--out", required=True, help="SVG to write")
    ap.add_argument("--title", default="sbc and rtpengine 10.5, bidirectional SDES-SRTP calls, one core each")
    a = ap.parse_args()
    sbc, rtp = load(a.sbc), [r for r in load(a.rtpengine) if r.get("bidir")]
    cpu = [
        ("sbc (SRTP to TLS WebSocket, JSON, base64)", "#c0392b", "", series(sbc, lambda r: r["us_per_call_second"] / 1000)),
        ("rtpengine (SRTP to SRTP)", "#2471a3", "", series(rtp, lambda r: r["derived"]["rtpengine_us_per_call_second"] / 1000)),
    ]
    lat = [
        ("sbc carrier to agent", "#c0392b", "", series(sbc, lambda r: r.get("c2a_p99_ms"))),
        ("sbc agent to carrier", "#c0392b", "6,4", series(sbc, lambda r: r.get("a2c_p99_ms"))),
        ("rtpengine leg A to B", "#2471a3", "", series(rtp, lambda r: r["generator"]["a_to_b"]["latency_us"]["p99"] / 1000)),
        ("rtpengine leg B to A", "#2471a3", "6,4", series(rtp, lambda r: r["generator"]["b_to_a"]["latency_us"]["p99"] / 1000)),
    ]
    xs = [n for _, _, _, pts in cpu + lat for n, _ in pts] or [1]
    W, H = 980, 420
    body = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif">' % (W, H),
            '<rect width="100%" height="100%" fill="white"/>',
            '<text x="%d" y="22" font-size="15" text-anchor="middle">%s</text>' % (W / 2, escape(a.title))]
    body += panel(80, 70, 360, 270, "CPU per call-second", "ms of CPU per call-second", cpu, xs)
    body += panel(580, 70, 360, 270, "p99 one-way latency", "ms", lat, xs)
    body.append('<text x="%d" y="%d" font-size="10" fill="#555" text-anchor="middle">%s</text>'
                % (W / 2, H - 10, escape("generated by benches/peers/plot.py from scripts/bench-peers output (medians per N)")))
    body.append("</svg>")
    with open(a.out, "w") as f:
        f.write("\n".join(body) + "\n")


if __name__ == "__main__":
    main()
