"""The lab, its tests and the benchmarks. Where things are:

lab.py            boot user-mode Linux once (real IPVS) and run a command inside: ``python -m integration.lab``
seed.py           the seed topology as data: addresses (IPv4, and IPv6 for the dual-stack lab), nodes, links
dualstack.py      configs with several VRRP instances and sync groups, and the havs pair that runs them
topology.py       SeedLab: builds the seed from network namespaces (host kernel or UML), runs daemons and web
                  servers in them, resets between tests; ``python -m integration.topology up|down``
namespaces.py     housekeeping of namespaces and processes (list, kill, delete, stale ones)
webserver.py      the real servers' web server (stdlib only, started as a script)
client.py         one HTTP GET from a namespace; ClientLoop, the client that measures outages
waits.py          the one bounded wait: poll (None on timeout) and wait_until (TimeoutError)
logs.py           reading a daemon's JSON event log
conftest.py       the test tiers (netns, uml) and the lab fixtures
test_*_netns.py   tests on the host kernel; test_*_uml.py: tests and drills inside UML

bench_*.py        one file per benchmark (prints figures, asserts nothing); what they share:
benchlib.py       lab-failure error, poll, fd limit, seed-config edits, keepalived blocks, CPU figures, table cells
adverts.py        VRRP adverts heard (capture, gaps) and sent (fake peer, keepalived reference sender)
okserver.py       the HTTP load the health-check benchmarks aim at
ipmonitor.py      ``ip monitor`` lines with arrival times
failover_report.py  the failover benchmark's results and table
bench_failover6.py  dual-stack crash failover (IPv6 beside IPv4) vs keepalived's vrrp_sync_group
bench_instances.py  the worst advert gap of 8 VRRP instances in one process, with and without check load
soak.py           the pair at 50 ms adverts under the 500-server check load for minutes: false takeovers
vrrp_parent.py    a VrrpProcess alone in a director's namespace (the instances netns tests)
demo.py           the README's main job: ``python -m integration.demo``
"""
