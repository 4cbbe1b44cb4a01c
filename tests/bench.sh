#!/bin/bash
# tests/bench.sh [FILTER...] -- `make bench`: the bench_* lab scenarios
# (tests/lab/scenarios/bench.rs), one VM each, through tests/lab/lab.sh.
# Each prints `@@BENCH {json}` lines: one figure, a ratio of medians of
# samples taken in the same VM against a baseline ("ratio", which the goal
# is checked against) and, where the samples were taken side by side, the
# median of the per-pair ratios ("paired"), which the host's load drifting
# between rounds affects far less. This script collects them
# into target/bench/results.json (all), target/bench/<id>.json (one each)
# and target/bench/results.md (the table it prints).
#
# Xen's block-iscsi baseline needs Xen's hotplug scripts: taken from the
# host's /etc/xen/scripts (Debian's xen-utils-common, which
# tests/lab/build-xen.sh installs) or from the Xen lab image, copied into
# the VM; without them those figures are left out.
# Env: LAB_TIMEOUT (s per VM, default 1800: five 1 GiB full resyncs on a
# busy host), LAB_MEM (MiB, default 3072: the 1 GiB heal figure keeps a 1 GiB LUN
# and a 1 GiB volume in guest RAM), and lab.sh's.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
OUT=$TOP/target/bench
mkdir -p "$OUT"
rm -rf "$OUT/xen-scripts" "$OUT"/*.json "$OUT/results.md"
t0=$(date +%s)

files=
for d in /etc/xen/scripts "${LAB_CACHE:-/var/tmp/iscsimple/lab}/xen/dom0-root/etc/xen/scripts"; do
    if [ -f "$d/block-iscsi" ]; then
        mkdir -p "$OUT/xen-scripts"
        for f in block-iscsi block-common.sh xen-hotplug-common.sh xen-script-common.sh \
                 logging.sh locking.sh hotplugpath.sh; do
            cp "$d/$f" "$OUT/xen-scripts/" || { rm -rf "$OUT/xen-scripts"; break; }
        done
        [ -d "$OUT/xen-scripts" ] && files=$OUT/xen-scripts && break
    fi
done
[ -n "$files" ] || echo "bench: no Xen hotplug scripts (/etc/xen/scripts/block-iscsi): block-iscsi figures left out" >&2

LAB_PREFIX=bench_ LAB_OUT="$OUT/lab" LAB_FILES="$files" LAB_MEM=${LAB_MEM:-3072} LAB_TIMEOUT=${LAB_TIMEOUT:-1800} \
    bash "$TOP/tests/lab/lab.sh" "$@" | tee "$OUT/lab.log"
rc=${PIPESTATUS[0]}

# the figures, in the order the scenarios printed them
cat "$OUT"/lab/logs/*.log 2>/dev/null | tr -d '\r' | sed -n 's/^@@BENCH //p' > "$OUT/results.jsonl"
python3 - "$OUT" "$(( $(date +%s) - t0 ))" <<'EOF'
import json, sys, os
out, wall = sys.argv[1], int(sys.argv[2])
figs = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
for f in figs:
    with open(os.path.join(out, f["id"] + ".json"), "w") as fh:
        json.dump(f, fh, indent=1)
with open(os.path.join(out, "results.json"), "w") as fh:
    json.dump({"wall_s": wall, "figures": figs}, fh, indent=1)
def num(x):
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"
def stats(s, unit):
    return f"{num(s['median'])} ({num(s['min'])}–{num(s['max'])}) {unit}"
rows = ["| figure | subject | baseline | subject median (min–max) | baseline median (min–max) | n | ratio | paired | goal | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for f in figs:
    met = {True: "yes", False: "**no**", None: "–"}[f["met"]]
    paired = "–" if f.get("paired_ratio") is None else f"{f['paired_ratio']:.3f}"
    rows.append(f"| {f['figure']} | {f['subject']} | {f['baseline']} | {stats(f['subject_stats'], f['unit'])} "
                f"| {stats(f['baseline_stats'], f['unit'])} | {f['n']} | {f['ratio']:.3f} | {paired} | {f['goal'] or '–'} | {met} |")
notes = [f"- {f['id']}: {f['note']}" for f in figs if f.get("note")]
text = "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"
open(os.path.join(out, "results.md"), "w").write(text)
print(); print(text)
print(f"bench: {len(figs)} figures, {wall}s in all; target/bench/results.json, results.md")
EOF
exit "$rc"
