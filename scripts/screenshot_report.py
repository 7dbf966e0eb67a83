#!/usr/bin/env python3
"""Check the Snakemake HTML report as a reader would: render it in headless Chromium, save screenshots, and make
sure every embedded figure loads.

    python scripts/screenshot_report.py results/report.html --out-dir results/report_check

Snakemake's report is one self-contained HTML file: a small React app whose results (figures, tables, text) sit in
a JavaScript object ``results`` as ``data:`` URIs. This script

1. reads that object and decodes every figure: each SVG must parse as XML with an ``<svg>`` root and a size, each
   PNG/JPEG must have a valid header and a non-zero size ("decoded" check, no browser needed);
2. opens a copy of the report in headless Chromium with a small script appended that shows every figure in turn,
   the way the report's own "view" button does (``app.setView({content: "img", ...})``), waits for the ``<img>`` and
   records its ``naturalWidth``/``naturalHeight``; the DOM is dumped after the JavaScript ran
   (``--dump-dom --virtual-time-budget``) and every figure must have loaded with a non-zero size ("browser" check);
3. saves screenshots: ``front.png`` (the report as it opens) and ``figure.png`` (the first figure, or ``--figure``,
   as the report shows it); ``--all-figures`` saves one screenshot per figure in ``figures/``.

It writes ``figure_check.json`` (per figure: mime type, decoded size, browser size, ok) to ``--out-dir`` and exits
1 when a figure fails to load, 2 on bad input (no report, no Chromium). Chromium: Debian's ``chromium`` package
(``apt-get install chromium``); ``--chromium`` or ``$CHROMIUM`` selects another binary. As root Chromium needs
``--no-sandbox``, which is passed when the script runs as root.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

CHECK_ID = "myoglucose-figure-check"
IMAGE_MIME = ("image/svg+xml", "image/png", "image/jpeg", "image/gif")


class ReportError(Exception):
    """The report cannot be read (not a Snakemake report, no results object)."""


# ------------------------------------------------------------------------------------------------ the report
def report_results(text: str) -> dict[str, dict]:
    """The ``results`` object of a Snakemake report (``<script id="results"> var results = {...};``)."""
    m = re.search(r'<script id="results">\s*var results\s*=\s*', text)
    if not m:
        raise ReportError("no <script id=\"results\"> block: not a Snakemake HTML report")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text, m.end())
    except json.JSONDecodeError as e:
        raise ReportError(f"the results object is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ReportError("the results object is not a mapping")
    return obj


def figure_entries(results: dict[str, dict]) -> dict[str, dict]:
    return {k: v for k, v in results.items() if str(v.get("mime_type", "")).startswith(IMAGE_MIME)}


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """(mime type, bytes) of a ``data:`` URI (base64 or percent-encoded)."""
    if not uri.startswith("data:") or "," not in uri:
        raise ValueError("not a data: URI")
    head, payload = uri[5:].split(",", 1)
    parts = head.split(";")
    if parts[-1] == "base64":
        return parts[0], base64.b64decode(payload, validate=True)
    return parts[0], unquote(payload).encode("utf-8")


def _svg_size(data: bytes) -> tuple[float, float]:
    root = ET.fromstring(data)
    if not root.tag.endswith("svg"):
        raise ValueError(f"root element is <{root.tag}>, not <svg>")

    def length(name):
        v = root.get(name)
        return float(re.match(r"[\d.]+", v).group(0)) if v and re.match(r"[\d.]+", v) else 0.0

    w, h = length("width"), length("height")
    if (not w or not h) and root.get("viewBox"):
        _, _, w, h = (float(x) for x in root.get("viewBox").replace(",", " ").split())
    return w, h


def _png_size(data: bytes) -> tuple[float, float]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (bad signature or no IHDR)")
    return tuple(float(x) for x in struct.unpack(">II", data[16:24]))


def _jpeg_size(data: bytes) -> tuple[float, float]:
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker, seglen = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return float(w), float(h)
        i += 2 + seglen
    raise ValueError("JPEG without a frame header")


def decoded_check(entries: dict[str, dict]) -> dict[str, dict]:
    """Decode every embedded figure; per figure: mime, bytes, width, height, decoded_ok, decode_error."""
    out = {}
    for path, entry in entries.items():
        rec = {"mime_type": entry.get("mime_type"), "bytes": 0, "width": 0.0, "height": 0.0, "decoded_ok": False}
        try:
            mime, data = decode_data_uri(str(entry.get("data_uri", "")))
            rec["bytes"] = len(data)
            if mime == "image/svg+xml":
                w, h = _svg_size(data)
            elif mime == "image/png":
                w, h = _png_size(data)
            elif mime == "image/jpeg":
                w, h = _jpeg_size(data)
            else:
                w, h = (1.0, 1.0) if data else (0.0, 0.0)
            rec.update(width=w, height=h, decoded_ok=bool(w > 0 and h > 0))
            if not rec["decoded_ok"]:
                rec["decode_error"] = "zero size"
        except Exception as e:  # noqa: BLE001 - every failure is a finding about this figure
            rec["decode_error"] = f"{type(e).__name__}: {e}"
        out[path] = rec
    return out


# --------------------------------------------------------------------------------------------------- Chromium
_CHECK_JS = """
<script>
(function () {
  const TIMEOUT_MS = %(timeout_ms)d;
  function sleep(ms) { return new Promise(r => setTimeout(r, ms)); }
  async function waitFor(fn) {
    const t0 = Date.now();
    for (;;) { const v = fn(); if (v) return v; if (Date.now() - t0 > TIMEOUT_MS) return null; await sleep(25); }
  }
  async function main() {
    const out = {};
    const ready = await waitFor(() => typeof app !== "undefined" && typeof results !== "undefined");
    if (!ready) { out["<report>"] = {error: "the report's app did not start"}; return out; }
    const paths = Object.keys(results).filter(p => String(results[p].mime_type || "").match(/^image\\//));
    for (const p of paths) {
      const uri = results[p].data_uri;
      app.setView({content: "img", contentPath: uri, resultPath: p});
      const img = await waitFor(() => Array.from(document.querySelectorAll("img")).find(
          i => i.getAttribute("src") === uri && i.complete));
      out[p] = img ? {width: img.naturalWidth, height: img.naturalHeight}
                   : {width: 0, height: 0, error: "no loaded <img> within " + TIMEOUT_MS + " ms"};
    }
    return out;
  }
  main().catch(e => ({"<report>": {error: String(e)}})).then(out => {
    const show = %(show)s;
    if (show && typeof app !== "undefined" && results[show]) {
      app.setView({content: "img", contentPath: results[show].data_uri, resultPath: show,
                   navbarMode: "resultinfo"});
    }
    const pre = document.createElement("pre");
    pre.id = "%(check_id)s";
    pre.style.display = "none";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  });
})();
</script>
"""

_SHOW_JS = """
<script>
(function () {
  const show = %(show)s;
  (function go() {
    if (typeof app === "undefined") { setTimeout(go, 25); return; }
    app.setView({content: "img", contentPath: results[show].data_uri, resultPath: show, navbarMode: "resultinfo"});
  })();
})();
</script>
"""


def find_chromium(explicit: str | None = None) -> str | None:
    for name in (explicit, os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _inject(text: str, script: str) -> str:
    i = text.rfind("</body>")
    return text[:i] + script + text[i:] if i >= 0 else text + script


def _chromium(binary: str, page: Path, *args: str, budget_ms: int, timeout_s: float,
              size: tuple[int, int]) -> subprocess.CompletedProcess[str]:
    cmd = [binary, "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", "--mute-audio", f"--window-size={size[0]},{size[1]}",
           f"--virtual-time-budget={budget_ms}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd += [f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def browser_check(binary: str, text: str, work: Path, show: str | None, *, budget_ms: int, timeout_s: float,
                  size: tuple[int, int]) -> dict[str, dict]:
    """Show every figure in the report's own viewer in headless Chromium; per figure: width, height (natural)."""
    page = work / "report_check.html"
    page.write_text(_inject(text, _CHECK_JS % {"timeout_ms": 10000, "show": json.dumps(show),
                                               "check_id": CHECK_ID}), encoding="utf-8")
    res = _chromium(binary, page, "--dump-dom", budget_ms=budget_ms, timeout_s=timeout_s, size=size)
    m = re.search(rf'<pre id="{CHECK_ID}"[^>]*>(.*?)</pre>', res.stdout, flags=re.S)
    if not m:
        tail = (res.stderr or "")[-2000:]
        raise RuntimeError(f"Chromium did not finish the figure check (exit {res.returncode}); increase "
                           f"--budget-ms? stderr tail:\n{tail}")
    return json.loads(html.unescape(m.group(1)))


def screenshot(binary: str, text: str, work: Path, out: Path, show: str | None, *, budget_ms: int,
               timeout_s: float, size: tuple[int, int]) -> Path:
    page = work / f"shot_{out.stem}.html"
    page.write_text(_inject(text, _SHOW_JS % {"show": json.dumps(show)}) if show else text, encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = _chromium(binary, page, f"--screenshot={out.resolve()}", budget_ms=budget_ms, timeout_s=timeout_s,
                    size=size)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot {out} (exit {res.returncode}): {res.stderr[-2000:]}")
    return out


# ------------------------------------------------------------------------------------------------------ main
def check_report(report: Path, out_dir: Path, *, chromium: str | None = None, figure: str | None = None,
                 all_figures: bool = False, budget_ms: int = 60000, timeout_s: float = 300,
                 size: tuple[int, int] = (1600, 1000), browser: bool = True) -> dict:
    """Run the checks; returns the summary written to ``out_dir/figure_check.json``."""
    text = report.read_text(encoding="utf-8")
    entries = figure_entries(report_results(text))
    if not entries:
        raise ReportError(f"{report}: the report embeds no figures")
    per_fig = decoded_check(entries)
    summary: dict = {"report": str(report), "n_figures": len(entries), "figures": per_fig, "screenshots": []}
    out_dir.mkdir(parents=True, exist_ok=True)
    if browser:
        binary = find_chromium(chromium)
        if binary is None:
            raise ReportError("Chromium not found (apt-get install chromium, or pass --chromium)")
        summary["chromium"] = binary
        show = next((p for p in entries if figure and figure in p), None) if figure else next(iter(entries))
        with tempfile.TemporaryDirectory(prefix="report-check-") as tmp:
            work = Path(tmp)
            seen = browser_check(binary, text, work, show, budget_ms=budget_ms, timeout_s=timeout_s, size=size)
            for path, rec in per_fig.items():
                b = seen.get(path, {"width": 0, "height": 0, "error": "not shown by the browser check"})
                rec["browser_width"], rec["browser_height"] = b.get("width", 0), b.get("height", 0)
                if b.get("error"):
                    rec["browser_error"] = b["error"]
            if "<report>" in seen:
                summary["browser_error"] = seen["<report>"].get("error")
            shots = [screenshot(binary, text, work, out_dir / "front.png", None, budget_ms=15000,
                                timeout_s=timeout_s, size=size)]
            if show:
                shots.append(screenshot(binary, text, work, out_dir / "figure.png", show, budget_ms=15000,
                                        timeout_s=timeout_s, size=size))
            if all_figures:
                for k, path in enumerate(entries):
                    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.removeprefix("results/"))
                    shots.append(screenshot(binary, text, work, out_dir / "figures" / f"{k:02d}_{name}.png", path,
                                            budget_ms=15000, timeout_s=timeout_s, size=size))
            summary["screenshots"] = [str(p) for p in shots]
    for rec in per_fig.values():
        rec["ok"] = bool(rec["decoded_ok"] and (not browser or (rec.get("browser_width", 0) > 0
                                                                 and rec.get("browser_height", 0) > 0)))
    summary["failed"] = sorted(p for p, r in per_fig.items() if not r["ok"])
    summary["ok"] = not summary["failed"] and not summary.get("browser_error")
    (out_dir / "figure_check.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, nargs="?", default=Path("results/report.html"))
    ap.add_argument("--out-dir", type=Path, default=Path("results/report_check"),
                    help="screenshots and figure_check.json (default results/report_check)")
    ap.add_argument("--chromium", help="Chromium binary (default: $CHROMIUM, chromium, chromium-browser)")
    ap.add_argument("--figure", help="substring of the figure path to show in figure.png (default: the first)")
    ap.add_argument("--all-figures", action="store_true", help="also one screenshot per figure")
    ap.add_argument("--no-browser", action="store_true", help="only decode the embedded figures")
    ap.add_argument("--budget-ms", type=int, default=60000, help="Chromium virtual time budget of the check")
    ap.add_argument("--timeout", type=float, default=300, help="wall-clock limit per Chromium call [s]")
    ap.add_argument("--window", default="1600x1000", help="window size WxH (default 1600x1000)")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"error: {args.report}: file not found (build it: snakemake --report {args.report})", file=sys.stderr)
        return 2
    w, h = (int(x) for x in args.window.lower().split("x"))
    try:
        s = check_report(args.report, args.out_dir, chromium=args.chromium, figure=args.figure,
                         all_figures=args.all_figures, budget_ms=args.budget_ms, timeout_s=args.timeout,
                         size=(w, h), browser=not args.no_browser)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, rec in s["figures"].items():
        size = f"{rec.get('browser_width', '-')}x{rec.get('browser_height', '-')}" if not args.no_browser else \
            f"{rec['width']:g}x{rec['height']:g}"
        why = rec.get("decode_error") or rec.get("browser_error") or ""
        print(f"{'ok  ' if rec['ok'] else 'FAIL'} {path} ({rec['mime_type']}, {size}) {why}".rstrip())
    for shot in s["screenshots"]:
        print(f"screenshot {shot}")
    if s.get("browser_error"):
        print(f"error: {s['browser_error']}", file=sys.stderr)
    print(f"{s['n_figures'] - len(s['failed'])}/{s['n_figures']} figures load; details in "
          f"{args.out_dir / 'figure_check.json'}")
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
