#!/bin/bash
# tests/run-all.sh -- what `make test` runs: lints, unit tests (cargo test),
# packaging (tests/package.sh), the lab harness's self-test, then the lab
# scenarios in the VM; a line naming the scenarios each lab ran twice (a
# rerun passes, but is never silent), and one closing "N passed, N failed"
# line.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
mkdir -p target
fail_lint=0
if ! cargo fmt --check >&2; then echo "lint: cargo fmt --check failed"; fail_lint=1; fi
if ! cargo clippy --all-targets --features lab,crashpoints,sim -- -D warnings >&2; then echo "lint: clippy failed"; fail_lint=1; fi

cargo test --features sim 2>&1 | tee target/unit.log
unit_rc=${PIPESTATUS[0]}
# sum the "test result: ok. N passed; M failed" lines of every test binary
read -r up uf < <(awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
                      END { print p + 0, f + 0 }' target/unit.log)
up=${up:-0}; uf=${uf:-0}
# a build failure counts as a failure even when no test ran
[ "$unit_rc" != 0 ] && [ "$uf" = 0 ] && uf=1

# packaging: make deb, lintian, contents, make install/uninstall
bash tests/package.sh 2>&1 | tee target/package.log
pkg_rc=${PIPESTATUS[0]}
pp=$(tail -1 target/package.log | sed -n 's/^package: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
pf=$(tail -1 target/package.log | sed -n 's/^package: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p')
pp=${pp:-0}; pf=${pf:-0}
[ "$pkg_rc" != 0 ] && [ "$pf" = 0 ] && pf=1

# the harness's rule for running a scenario twice, on made-up consoles (no VM)
bash tests/lab/lab.sh --self-test 2>&1 | tee target/lab-selftest.log
st_rc=${PIPESTATUS[0]}
sp=$(tail -1 target/lab-selftest.log | sed -n 's/^lab self-test: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
sf=$(tail -1 target/lab-selftest.log | sed -n 's/^lab self-test: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p')
sp=${sp:-0}; sf=${sf:-0}
[ "$st_rc" != 0 ] && [ "$sf" = 0 ] && sf=1

# Two plain VMs at once: many scenarios wait on timeouts and the target,
# and measured on 2 cores 13 scenarios took 261 s against 355 s one at a
# time. The Xen lab stays one at a time: its dom0 boots are CPU-bound.
LAB_JOBS=${LAB_JOBS:-2} bash tests/lab/lab.sh 2>target/lab.err | tee target/lab.log
lab_rc=${PIPESTATUS[0]}
lp=$(tail -1 target/lab.log | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
lf=$(tail -1 target/lab.log | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p')
lp=${lp:-0}; lf=${lf:-0}
if [ "$lab_rc" != 0 ] && [ "$lf" = 0 ]; then lf=1; tail -40 target/lab.err; fi

# the same scenarios' Xen half: a real Xen dom0 booted in the VM
LAB_FLAVOR=xen bash tests/lab/lab.sh 2>target/lab-xen.err | tee target/lab-xen.log
xen_rc=${PIPESTATUS[0]}
xp=$(tail -1 target/lab-xen.log | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
xf=$(tail -1 target/lab-xen.log | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p')
xp=${xp:-0}; xf=${xf:-0}
if [ "$xen_rc" != 0 ] && [ "$xf" = 0 ]; then xf=1; tail -40 target/lab-xen.err; fi

# lab.sh's rerun line ("lab: no reruns" or "lab: N rerun(s): NAME..."),
# the line before its closing one
reruns() {
    local l
    l=$(grep -aE '^lab: (no reruns|[0-9]+ rerun\(s\):)' "$1" | tail -1)
    echo "${l:-lab: no rerun line (lab.sh ended early)}"
}
echo "reruns: $(reruns target/lab.log); xen $(reruns target/lab-xen.log)"
echo "lint: $([ $fail_lint = 0 ] && echo ok || echo FAILED); unit: $up passed, $uf failed; package: $pp passed, $pf failed; lab self-test: $sp passed, $sf failed; lab: $lp passed, $lf failed; xen lab: $xp passed, $xf failed"
echo "$((up + pp + sp + lp + xp)) passed, $((uf + pf + sf + lf + xf + fail_lint)) failed"
[ "$unit_rc" = 0 ] && [ "$pkg_rc" = 0 ] && [ "$st_rc" = 0 ] && [ "$lab_rc" = 0 ] && [ "$xen_rc" = 0 ] && [ $fail_lint = 0 ]
