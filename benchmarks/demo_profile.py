"""Per-step wall and CPU seconds of ``llmguard demo --json`` documents, side by side (docs/benchmarks.md).

    LLMGUARD_CACHE=$(mktemp -d) /usr/bin/time -v llmguard demo --json > first.json   # empty cache
    /usr/bin/time -v llmguard demo --json > cached.json                               # same cache again
    python benchmarks/demo_profile.py first.json cached.json

CPU seconds are user + system of the demo's processes (its second process and any subprocess
included): on a shared machine they say more than the wall time, which other load inflates.
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    docs = [json.load(open(p)) for p in paths]
    names = list(dict.fromkeys(s["name"] for d in docs for s in d["steps"]))
    print("| step | " + " | ".join(f"{p}: wall s | CPU s" for p in paths) + " |")
    print("|---|" + "---:|---:|" * len(docs))
    for name in names:
        cells = []
        for d in docs:
            s = next((s for s in d["steps"] if s["name"] == name), None)
            cells += ["-", "-"] if s is None else [f"{s['seconds']:.1f}", "-" if s.get("cpu_seconds") is None else f"{s['cpu_seconds']:.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for label, wall, cpu in (("testbed build or reuse", "testbed_seconds", "testbed_cpu_seconds"), ("whole demo", "seconds", "cpu_seconds")):
        cells = []
        for d in docs:
            cells += [f"{d[wall]:.1f}" if d.get(wall) is not None else "-", f"{d[cpu]:.1f}" if d.get(cpu) is not None else "-"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("rows ok: " + ", ".join(f"{p}: {sum(r['ok'] for r in d['rows'])}/{len(d['rows'])}" for p, d in zip(paths, docs)))


if __name__ == "__main__":
    main(sys.argv[1:])
