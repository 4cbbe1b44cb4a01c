#!/bin/bash
# Guest side of lab.sh (runs as /lab/test.sh): run one lab scenario of the
# lab test binary, and on failure print what the host needs to see.
export PATH=/usr/sbin:/usr/bin RUST_BACKTRACE=1 ISCSIMPLE_BIN=/lab/iscsimple
cd /lab || exit 127
echo "@@LAB-SCENARIO-START ${LAB_TEST}@@"
/lab/lab-tests --exact "$LAB_TEST" --test-threads=1 --nocapture 2>&1
rc=$?
echo "@@LAB-SCENARIO-END rc=$rc@@"
if [ $rc -ne 0 ]; then
    echo "==== guest diagnostics for $LAB_TEST"
    echo "---- dmesg (tail)"; dmesg | tail -n 40
    echo "---- syslog: iscsid, tgtd, iscsimple (tail)"; tail -n 60 /run/messages 2>/dev/null
    echo "---- /proc/mdstat"; cat /proc/mdstat
    echo "---- iscsi sessions"; iscsiadm -m session 2>&1
    echo "---- block devices"; ls /sys/block
fi
exit $rc
