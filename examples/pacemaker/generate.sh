#!/bin/sh
# Prints the mutual-takeover configuration for N cohost instances on N
# nodes: instance demoNN prefers node N and falls back to the next
# node, each a group Filesystem + IPaddr2 + ocf:cohost:instance.
#
#   generate.sh N xml|crm|pcs|toml
#
# xml:  CIB fragment, load with
#         cibadmin --modify --allow-create --scope configuration --xml-file FILE
# crm:  crm shell text, load with   crm configure load update FILE
# pcs:  pcs commands (sh), run with sh FILE   (or pcs -f cib.xml ... offline)
# toml: the cohost instances file (/srv/san/conf/demo.toml in the lab)
#
# two-instances.{xml,crm,pcs,toml} in this directory are `generate.sh 2 …`;
# README.md says why each value is what it is, and what to change for a
# real site (addresses, nic, the SAN device). The values here are the lab's
# (examples/lab/run.sh, tests/cluster/): 10.213.0.0/24 exists only inside
# its network namespaces, and the "SAN" is a directory bound at /srv/san.
set -eu
N=${1:?usage: generate.sh N xml|crm|pcs|toml}
FMT=${2:?usage: generate.sh N xml|crm|pcs|toml}
case $N in '' | *[!0-9]*) echo "generate.sh: N must be a number" >&2; exit 2 ;; esac
if [ "$N" -lt 2 ] || [ "$N" -gt 99 ]; then echo "generate.sh: N must be 2..99" >&2; exit 2; fi

# Every tunable in one place (README.md: "Why each value").
NET=10.213.0          # the floating addresses: $NET.(100+i)/24
NIC=eth0              # the interface IPaddr2 adds them to
PORT=9003             # every instance on the same port: mutual takeover
PREFER=100            # location score on the instance's home node
FALLBACK=50           # ... on the next node (its takeover node)
STICKINESS=100        # per member: a running group stays (3 x 100 > 100 - 50)
THRESHOLD=3           # failures on one node before the group leaves it
FAILURE_TIMEOUT=10min # a node's failures are forgotten after this
CONFIG=/srv/san/conf  # the instances file, the same on every node
RUNDIR=/run/cohost    # cohost's runtime dir (node-local)

id() { printf 'demo%02d' "$1"; }
node() { echo "node$1"; }
next() { echo $(($1 % N + 1)); }

xml_group() { # i
	d=$(id "$1")
	cat <<EOF
    <group id="$d-grp">
      <meta_attributes id="$d-grp-meta">
        <nvpair id="$d-grp-stickiness" name="resource-stickiness" value="$STICKINESS"/>
        <nvpair id="$d-grp-threshold" name="migration-threshold" value="$THRESHOLD"/>
        <nvpair id="$d-grp-failure-timeout" name="failure-timeout" value="$FAILURE_TIMEOUT"/>
      </meta_attributes>
      <primitive id="$d-fs" class="ocf" provider="heartbeat" type="Filesystem">
        <instance_attributes id="$d-fs-ia">
          <nvpair id="$d-fs-device" name="device" value="/srv/san/$d"/>
          <nvpair id="$d-fs-directory" name="directory" value="/srv/$d"/>
          <nvpair id="$d-fs-fstype" name="fstype" value="none"/>
          <nvpair id="$d-fs-options" name="options" value="bind"/>
          <nvpair id="$d-fs-force-unmount" name="force_unmount" value="safe"/>
        </instance_attributes>
        <operations>
          <op id="$d-fs-start" name="start" interval="0s" timeout="60s"/>
          <op id="$d-fs-stop" name="stop" interval="0s" timeout="60s"/>
          <op id="$d-fs-monitor" name="monitor" interval="20s" timeout="40s">
            <instance_attributes id="$d-fs-monitor-ia">
              <nvpair id="$d-fs-monitor-level" name="OCF_CHECK_LEVEL" value="20"/>
            </instance_attributes>
          </op>
        </operations>
      </primitive>
      <primitive id="$d-ip" class="ocf" provider="heartbeat" type="IPaddr2">
        <instance_attributes id="$d-ip-ia">
          <nvpair id="$d-ip-ip" name="ip" value="$NET.$((100 + $1))"/>
          <nvpair id="$d-ip-mask" name="cidr_netmask" value="24"/>
          <nvpair id="$d-ip-nic" name="nic" value="$NIC"/>
        </instance_attributes>
        <operations>
          <op id="$d-ip-start" name="start" interval="0s" timeout="20s"/>
          <op id="$d-ip-stop" name="stop" interval="0s" timeout="20s"/>
          <op id="$d-ip-monitor" name="monitor" interval="10s" timeout="20s"/>
        </operations>
      </primitive>
      <primitive id="$d" class="ocf" provider="cohost" type="instance">
        <instance_attributes id="$d-ia">
          <nvpair id="$d-ia-instance" name="instance" value="$d"/>
          <nvpair id="$d-ia-config" name="config" value="$CONFIG"/>
          <nvpair id="$d-ia-runtime-dir" name="runtime_dir" value="$RUNDIR"/>
        </instance_attributes>
        <operations>
          <op id="$d-start" name="start" interval="0s" timeout="90s"/>
          <op id="$d-stop" name="stop" interval="0s" timeout="60s"/>
          <op id="$d-monitor" name="monitor" interval="10s" timeout="30s"/>
          <op id="$d-monitor-deep" name="monitor" interval="60s" timeout="30s">
            <instance_attributes id="$d-monitor-deep-ia">
              <nvpair id="$d-monitor-deep-level" name="OCF_CHECK_LEVEL" value="10"/>
            </instance_attributes>
          </op>
        </operations>
      </primitive>
    </group>
EOF
}

case $FMT in
xml)
	echo "<!-- cohost mutual takeover, $N instances on $N nodes: examples/pacemaker/generate.sh $N xml"
	echo "     load it with cibadmin: see examples/pacemaker/README.md (XML comments cannot hold a double hyphen) -->"
	echo "<configuration>"
	echo "  <resources>"
	i=1; while [ $i -le "$N" ]; do xml_group $i; i=$((i + 1)); done
	echo "  </resources>"
	echo "  <constraints>"
	i=1
	while [ $i -le "$N" ]; do
		d=$(id $i)
		echo "    <rsc_location id=\"$d-prefers-$(node $i)\" rsc=\"$d-grp\" node=\"$(node $i)\" score=\"$PREFER\"/>"
		echo "    <rsc_location id=\"$d-falls-back-to-$(node "$(next $i)")\" rsc=\"$d-grp\" node=\"$(node "$(next $i)")\" score=\"$FALLBACK\"/>"
		i=$((i + 1))
	done
	echo "  </constraints>"
	echo "</configuration>"
	;;
crm)
	echo "# cohost mutual takeover, $N instances on $N nodes: examples/pacemaker/generate.sh $N crm"
	echo "#   crm configure load update THIS_FILE"
	i=1
	while [ $i -le "$N" ]; do
		d=$(id $i)
		cat <<EOF
primitive $d-fs ocf:heartbeat:Filesystem \\
	params device="/srv/san/$d" directory="/srv/$d" fstype=none options=bind force_unmount=safe \\
	op start interval=0s timeout=60s \\
	op stop interval=0s timeout=60s \\
	op monitor interval=20s timeout=40s OCF_CHECK_LEVEL=20
primitive $d-ip ocf:heartbeat:IPaddr2 \\
	params ip=$NET.$((100 + i)) cidr_netmask=24 nic=$NIC \\
	op start interval=0s timeout=20s \\
	op stop interval=0s timeout=20s \\
	op monitor interval=10s timeout=20s
primitive $d ocf:cohost:instance \\
	params instance=$d config="$CONFIG" runtime_dir="$RUNDIR" \\
	op start interval=0s timeout=90s \\
	op stop interval=0s timeout=60s \\
	op monitor interval=10s timeout=30s \\
	op monitor interval=60s timeout=30s OCF_CHECK_LEVEL=10
group $d-grp $d-fs $d-ip $d \\
	meta resource-stickiness=$STICKINESS migration-threshold=$THRESHOLD failure-timeout=$FAILURE_TIMEOUT
location $d-prefers-$(node $i) $d-grp $PREFER: $(node $i)
location $d-falls-back-to-$(node "$(next $i)") $d-grp $FALLBACK: $(node "$(next $i)")
EOF
		i=$((i + 1))
	done
	;;
pcs)
	echo "#!/bin/sh"
	echo "# cohost mutual takeover, $N instances on $N nodes: examples/pacemaker/generate.sh $N pcs"
	echo "# Run on one node of the cluster (pcs 0.10 / 0.11). To build it offline first:"
	echo "#   pcs cluster cib cib.xml; PCS=\"pcs -f cib.xml\" sh THIS_FILE; pcs cluster cib-push cib.xml"
	echo "set -eu"
	echo "PCS=\${PCS:-pcs}"
	i=1
	while [ $i -le "$N" ]; do
		d=$(id $i)
		cat <<EOF
\$PCS resource create $d-fs ocf:heartbeat:Filesystem \\
	device="/srv/san/$d" directory="/srv/$d" fstype=none options=bind force_unmount=safe \\
	op start interval=0s timeout=60s stop interval=0s timeout=60s \\
	monitor interval=20s timeout=40s OCF_CHECK_LEVEL=20 \\
	--group $d-grp
\$PCS resource create $d-ip ocf:heartbeat:IPaddr2 \\
	ip=$NET.$((100 + i)) cidr_netmask=24 nic=$NIC \\
	op start interval=0s timeout=20s stop interval=0s timeout=20s \\
	monitor interval=10s timeout=20s \\
	--group $d-grp
\$PCS resource create $d ocf:cohost:instance \\
	instance=$d config="$CONFIG" runtime_dir="$RUNDIR" \\
	op start interval=0s timeout=90s stop interval=0s timeout=60s \\
	monitor interval=10s timeout=30s \\
	monitor interval=60s timeout=30s OCF_CHECK_LEVEL=10 \\
	--group $d-grp
\$PCS resource meta $d-grp resource-stickiness=$STICKINESS migration-threshold=$THRESHOLD failure-timeout=$FAILURE_TIMEOUT
\$PCS constraint location $d-grp prefers $(node $i)=$PREFER $(node "$(next $i)")=$FALLBACK
EOF
		i=$((i + 1))
	done
	;;
toml)
	echo "# cohost instances file for the mutual-takeover example: generate.sh $N toml"
	echo "# (in the lab: /srv/san/conf/demo.toml, the same file on every node)."
	echo "# Every instance runs the same service on the same port; each has its"
	echo "# own floating address and its data on its own Filesystem resource."
	cat <<EOF

[service.counter]
command = ["/srv/san/bin/counter"]
ready   = { tcp = "\${address}:\${port}", timeout = "20s" }
stop    = { timeout = "5s" }
health  = [{ tcp = "\${address}:\${port}", expect = "counter", interval = "10s", timeout = "2s" }]
EOF
	i=1
	while [ $i -le "$N" ]; do
		d=$(id $i)
		cat <<EOF

[instance.$d]
service  = "counter"
address  = "$NET.$((100 + i))"
hostname = "$d.example"
port     = $PORT
paths    = { data = "/srv/$d/data", log = "/srv/$d/log" }
EOF
		i=$((i + 1))
	done
	;;
*) echo "generate.sh: format must be xml, crm, pcs or toml" >&2; exit 2 ;;
esac
