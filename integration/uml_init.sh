#!/bin/sh
# PID 1 inside the user-mode Linux lab (see integration/lab.py).
# The kernel passes unknown "key=value" boot parameters to init as environment
# variables: HAVS_JOB is the host path of the job file written by lab.py.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root HAVS_IN_UML=1
# The console is a tty: stop it turning "\n" into "\r\n" in our output.
stty -onlcr 2>/dev/null || true

mount -t proc proc /proc
mount -t sysfs sys /sys

# Read the job before the tmpfs mounts below can hide it (the repo may be under /tmp).
# shellcheck disable=SC1090
. "$HAVS_JOB"   # sets HAVS_STATUS, HAVS_CWD, HAVS_HOSTFS, havs_cmd() and exports

# Fresh tmpfs for /tmp and /run so nothing the lab does leaks onto the host.
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns

# The tmpfs mounts above may hide the repo (CI clones may live under /tmp):
# graft those host directories back at the same paths.
for p in $HAVS_HOSTFS; do
    mkdir -p "$p" && mount -t hostfs none "$p" -o "$p" || echo "uml_init: cannot expose $p" >&2
done

# The host has no modules for this kernel; UML ships its own. Build a module
# tree under /run (tmpfs) instead of touching the host's /lib/modules, and point
# the kernel's on-demand loader at it through a wrapper.
rel=$(uname -r)
mods=/run/havs-modroot
mkdir -p "$mods/lib/modules"
ln -s "/usr/lib/uml/modules/$rel" "$mods/lib/modules/$rel"
# The package ships modules.dep; depmod (~2 s in UML) only if it does not.
[ -e "$mods/lib/modules/$rel/modules.dep" ] || depmod -b "$mods" "$rel" 2>/dev/null
printf '#!/bin/sh\nexec /sbin/modprobe -d %s "$@"\n' "$mods" >/run/havs-modprobe
chmod +x /run/havs-modprobe
echo /run/havs-modprobe >/proc/sys/kernel/modprobe
# One modprobe for all (process start-up is slow in UML); -a carries on past
# missing ones: tests that need a missing module fail on their own.
modprobe -a -q -d "$mods" ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh \
    ip_vs_sh ip_vs_sed ip_vs_nq ip_vs_fo ip_vs_ovf ip_vs_mh ip_vs_pe_sip \
    veth bridge dummy macvlan ipip nf_conntrack nf_nat tun 8021q 2>/dev/null
ip link set lo up

cd "$HAVS_CWD" || { echo "uml_init: no such dir $HAVS_CWD" >&2; echo 126 >"$HAVS_STATUS"; halt -f; }
havs_cmd </dev/null
rc=$?
echo "$rc" >"$HAVS_STATUS"
sync
halt -f 2>/dev/null
echo o >/proc/sysrq-trigger
sleep 5
