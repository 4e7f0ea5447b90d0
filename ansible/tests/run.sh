#!/usr/bin/env bash
# The Ansible role's proof (run by .ci/run, as root on Debian 12):
#   1. ansible-lint (production profile) and ansible-playbook --syntax-check, from a temporary
#      venv with ansible/requirements.txt's pinned versions; the inventory filter's unit tests.
#   2. A real run: a debootstrap'ed Debian 12 root (cached under /var/cache/sluice-ci/) is
#      configured by site.yml through the chroot connection with the sluice binary built here;
#      then the files, modes, unit and rendered configs are checked, `sluice check` accepts the
#      rendered config inside the root, the private key appears in no output, a second run
#      reports changed=0, a peer added reloads sluice (never restarts it), and what a reload
#      refuses (a new [dataplane], a new ListenPort) restarts it.
#   3. Bad inventories (a missing key, an invalid CIDR, overlapping AllowedIPs) fail before
#      anything in a fresh root changes, with a message naming the peer.
#   4. The HA templates (keepalived, BIRD), rendered, are accepted by keepalived -t and bird -p.
#
#   ansible/tests/run.sh            SLUICE_BIN=/path/to/sluice to skip the cargo build
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ansible_dir=$(dirname "$here")
repo=$(dirname "$ansible_dir")
cache=${SLUICE_CI_CACHE:-/var/cache/sluice-ci}
mirror=${SLUICE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
started=$SECONDS

step() { printf '\n--> ansible: %s\n' "$*"; }
die() { printf 'ansible/tests/run.sh: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap and the chroot connection)"

work=$(mktemp -d /tmp/sl-ansible-test.XXXXXX)
netns_made=
cleanup() {
  local rc=$?
  [ -z "$netns_made" ] || ip netns del "$netns_made" 2>/dev/null || true
  # debootstrap mounts /proc and /sys in the root it builds; never leave a mount behind.
  { grep -o " $work[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$work"
  exit "$rc"
}
trap cleanup EXIT

# --- what the test needs on this machine -------------------------------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v python3 >/dev/null || need+=(python3)
# Debian's own python3 makes venvs only with python3-venv; try one to know.
python3 -m venv "$work/venv-probe" >/dev/null 2>&1 || need+=(python3-venv)
rm -rf "$work/venv-probe"
command -v keepalived >/dev/null || need+=(keepalived)   # checks the rendered HA templates
command -v bird >/dev/null || need+=(bird2)
command -v wg >/dev/null || need+=(wireguard-tools)      # keys for the example inventory check
if ((${#need[@]})); then
  step "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

step "venv with the pinned ansible-core, ansible and ansible-lint"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check -r "$ansible_dir/requirements.txt"
export PATH="$work/venv/bin:$PATH"
export ANSIBLE_CONFIG="$ansible_dir/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
export PYTHONDONTWRITEBYTECODE=1
export ANSIBLE_LOCAL_TEMP="$work/ansible-local" ANSIBLE_HOME="$work/ansible-home"
ansible --version

step "inventory filter unit tests"
python3 -m unittest discover -s "$here" -p 'test_*.py'

step "ansible-lint (production profile), on a copy (it writes a cache into the project)"
cp -a "$ansible_dir" "$work/lint"
(cd "$work/lint" && ansible-lint --offline --profile production --strict)

step "ansible-playbook --syntax-check"
(cd "$ansible_dir" && ansible-playbook -i inventory/example/hosts.yml site.yml --syntax-check)

step "the example inventory (a VRRP pair, an anycast group of three) passes the checks"
(cd "$ansible_dir" && ansible-playbook -i inventory/example/hosts.yml tests/validate-only.yml \
  -e "vault_sluice_vrrp_private_key=$(wg genkey)" -e "vault_sluice_anycast_private_key=$(wg genkey)" \
  -e vault_sluice_vrrp_auth_pass=example1) > "$work/example.log" 2>&1 ||
  { cat "$work/example.log"; die "the example inventory fails the checks"; }
grep -cE '^gw-.* ok=2 .* failed=0 ' "$work/example.log" | grep -qx 5 || { cat "$work/example.log"; die "not 5 hosts checked"; }
echo "ok: 5 hosts"

# --- the binary --------------------------------------------------------------------------------
bin=${SLUICE_BIN:-}
built_here=0
if [ -z "$bin" ]; then
  built_here=1
  step "cargo build --release -p sluice --bin sluice"
  (cd "$repo" && cargo build --release --locked -q -p sluice --bin sluice)
  bin="${CARGO_TARGET_DIR:-$repo/target}/release/sluice"
fi
[ -x "$bin" ] || die "no sluice binary at $bin"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac

# --- a Debian 12 root, cached --------------------------------------------------------------------
# What the role installs with apt is included here, so the runs need no mirror (apt finds it
# present); python3-apt is what Ansible's apt module needs on the target.
include=python3,python3-apt,systemd,systemd-sysv,passwd,procps,wireguard-tools,libelf1,zlib1g,ethtool
key=$(printf '%s %s' "$include" "$mirror" | sha256sum | cut -c1-12)
tarball="$cache/debian12-$key.tar.gz"
if [ ! -s "$tarball" ]; then
  step "debootstrap Debian 12 into the cache ($tarball; once)"
  mkdir -p "$cache"
  t0=$SECONDS
  debootstrap --variant=minbase --include="$include" bookworm "$work/build" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log"; die "debootstrap"; }
  tar -C "$work/build" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  rm -rf --one-file-system "$work/build"
  echo "debootstrap and archive: $((SECONDS - t0)) s"
fi
fresh_root() {
  mkdir -p "$1"
  tar -C "$1" -xzf "$tarball"
}

# Every file's path, type, mode, owner, size and mtime, to prove a root untouched.
snapshot() { (cd "$1" && find . -xdev -printf '%p %y %m %u %g %s %T@\n' | LC_ALL=C sort | sha256sum); }

binary_from=(-e "sluice_binary_src=$bin")
if ((built_here)); then
  # The first run builds the binary the way the role does without sluice_binary_src (cargo
  # build on the controller, a no-op after the build above) and installs it from the target
  # directory; the later runs name that same file.
  binary_from=()
fi
playbook() { # playbook ROOT LOG [ARGS...]: site.yml on the root, output to LOG
  local root=$1 log=$2
  shift 2
  (cd "$ansible_dir" && ansible-playbook -i tests/inventory/chroot.yml site.yml \
    -e "ansible_host=$root" "${binary_from[@]}" "$@") > "$log" 2>&1
}
recap() { grep -E '^sl-ansible-chroot +:' "$1" || true; }

# --- the real run --------------------------------------------------------------------------------
root="$work/root"
fresh_root "$root"
step "site.yml on a fresh Debian 12 root (chroot connection): first run"
t0=$SECONDS
playbook "$root" "$work/run1.log" || { cat "$work/run1.log"; die "the first run failed"; }
recap "$work/run1.log"
echo "first run: $((SECONDS - t0)) s"
binary_from=(-e "sluice_binary_src=$bin")
recap "$work/run1.log" | grep -q ' failed=0 ' || die "first run had failures"
recap "$work/run1.log" | grep -Eq ' changed=[1-9]' || die "first run changed nothing"

step "checking the host"
fail=0
check() { # check DESCRIPTION COMMAND...
  if "${@:2}"; then echo "ok: $1"; else echo "NOT OK: $1" >&2; fail=1; fi
}
# owners by name as the root's own /etc/passwd has them (uids differ from this machine's)
mode_is() {
  local got
  got=$(chroot "$root" stat -c '%a %U %G' "$1")
  [ "$got" = "$2" ] || { echo "  $1: $got, want $2" >&2; return 1; }
}
has() { grep -qE -- "$2" "$root$1" || { echo "  $1 lacks /$2/" >&2; return 1; }; }
hasnt_output() { ! grep -qF -- "$1" "$2"; }
cfg=/etc/sluice
check "binary installed, same bytes, 0755 root" mode_is /usr/local/bin/sluice "755 root root"
check "binary is the one built here" cmp -s "$bin" "$root/usr/local/bin/sluice"
check "system user sluice, no login" grep -Eq '^sluice:x:[0-9]+:[0-9]+:.*:/usr/sbin/nologin$' "$root/etc/passwd"
check "config dir 0750 root:sluice" mode_is $cfg "750 root sluice"
check "gateway.toml 0600 sluice" mode_is $cfg/gateway.toml "600 sluice sluice"
check "wg-quick file 0600 sluice" mode_is $cfg/sluice0.conf "600 sluice sluice"
check "private key 0600 root" mode_is $cfg/private.key "600 root root"
check "restart-settings 0600 root" mode_is $cfg/restart-settings "600 root root"
check "restart-settings: the port" has $cfg/restart-settings '^listen_port = 51820$'
check "gateway.toml names the wg-quick file" has $cfg/gateway.toml '^wg_config = "/etc/sluice/sluice0.conf"$'
check "gateway.toml dataplane" has $cfg/gateway.toml '^workers = 2$'
check "gateway.toml cores" has $cfg/gateway.toml '^cores = \[0, 1\]$'
check "gateway.toml outer" has $cfg/gateway.toml '^outer = "eth0"$'
check "gateway.toml metrics" has $cfg/gateway.toml '^listen = "127.0.0.1:9586"$'
key=$(tr -d '\n' < "$root$cfg/private.key")
check "the host-generated key is a WireGuard key" grep -Eq '^[A-Za-z0-9+/]{43}=$' <<<"$key"
check "the wg-quick file carries the host's key" grep -qxF "PrivateKey = $key" "$root$cfg/sluice0.conf"
check "three peers rendered" test "$(grep -c '^\[Peer\]' "$root$cfg/sluice0.conf")" = 3
check "peer allowed IPs rendered" has $cfg/sluice0.conf '^AllowedIPs = 10.77.16.0/24, 192.168.50.0/24$'
check "peer keepalive rendered" has $cfg/sluice0.conf '^PersistentKeepalive = 25$'
check "addresses rendered" has $cfg/sluice0.conf '^Address = 10.77.0.1/16, fd77::1/64$'
unit=/etc/systemd/system/sluice.service
check "unit 0644" mode_is $unit "644 root root"
check "unit: dedicated user" has $unit '^User=sluice$'
check "unit: ambient capabilities, exactly four" has $unit '^AmbientCapabilities=CAP_NET_ADMIN CAP_BPF CAP_NET_RAW CAP_IPC_LOCK$'
check "unit: bounding set, exactly four" has $unit '^CapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF CAP_NET_RAW CAP_IPC_LOCK$'
check "unit: restart on failure" has $unit '^Restart=on-failure$'
check "unit: reload is SIGHUP" has $unit '^ExecReload=/bin/kill -HUP \$MAINPID$'
check "unit: runs sluice up" has $unit '^ExecStart=/usr/local/bin/sluice up --config /etc/sluice/gateway.toml$'
check "unit enabled" test -L "$root/etc/systemd/system/multi-user.target.wants/sluice.service"
check "tuning unit enabled" test -L "$root/etc/systemd/system/multi-user.target.wants/sluice-tuning.service"
check "sysctl file" has /etc/sysctl.d/60-sluice.conf '^net.ipv4.conf.eth0.rp_filter = 2$'
check "sysctl forwarding" has /etc/sysctl.d/60-sluice.conf '^net.ipv4.ip_forward = 1$'
check "tuning script: queues = workers" has /usr/local/lib/sluice-tune '^workers=2$'
check "tuning script: worker cores" has /usr/local/lib/sluice-tune '^cores=\(0 1\)$'
check "irqbalance banned from the worker cores" has /etc/default/irqbalance '^IRQBALANCE_BANNED_CPULIST=0,1$'
check "hardware steps skipped in the chroot" grep -Eq 'skipping: .*\[sl-ansible-chroot\]' \
  <(grep -A1 'TASK \[sluice : Tune the hardware now' "$work/run1.log")
check "Prometheus scrape snippet" has /etc/prometheus/scrape.d/sluice.yml '"127.0.0.1:9586"'
check "Grafana dashboard" cmp -s "$repo/configs/grafana-dashboard.json" "$root/var/lib/grafana/dashboards/sluice.json"
check "HA off: no keepalived or BIRD configuration" test ! -e "$root/etc/keepalived/keepalived.conf" -a ! -e "$root/etc/bird/bird.conf"
check "the private key appears in no output" hasnt_output "$key" "$work/run1.log"
check "sluice check accepts the rendered config (inside the root)" \
  chroot "$root" /usr/local/bin/sluice check --config /etc/sluice/gateway.toml
check "the unit file passes systemd-analyze verify (inside the root)" \
  chroot "$root" systemd-analyze verify --man=no /etc/systemd/system/sluice.service
((fail == 0)) || die "the host is not as expected"

step "second run: nothing changes"
playbook "$root" "$work/run2.log" || { cat "$work/run2.log"; die "the second run failed"; }
recap "$work/run2.log"
recap "$work/run2.log" | grep -Eq ' changed=0 .* failed=0 ' ||
  { grep -B2 -E '^changed:' "$work/run2.log" >&2; die "the second run changed something"; }

step "a peer added: the wg-quick file changes and sluice is reloaded, not restarted"
playbook "$root" "$work/run3.log" -e "@$here/vars/peer-added.yml" || { cat "$work/run3.log"; die "the peer run failed"; }
recap "$work/run3.log"
grep -q 'RUNNING HANDLER \[sluice : Reload sluice\]' "$work/run3.log" || die "no reload after a peer change"
! grep -q 'RUNNING HANDLER \[sluice : Restart sluice\]' "$work/run3.log" || die "a peer change restarted sluice"
[ "$(grep -c '^\[Peer\]' "$root$cfg/sluice0.conf")" = 4 ] || die "the fourth peer is not in the file"
chroot "$root" /usr/local/bin/sluice check --config /etc/sluice/gateway.toml

# --- the unit's user and capabilities really run sluice --------------------------------------------
# What systemd would do for sluice.service, by hand (no systemd runs here): in a network namespace
# and a private mount namespace, the installed binary runs inside the root as the unit's User=
# with exactly its AmbientCapabilities= / CapabilityBoundingSet=, /run/wireguard owned by that
# user (RuntimeDirectory=) and /dev/net/tun mode 0666 (as udev makes it on Debian).
unit_runs() { # unit_runs MODE: the rendered config's data path (socket or xdp) must come up
  unit="$root/etc/systemd/system/sluice.service"
  unit_caps=$(sed -n 's/^AmbientCapabilities=//p' "$unit")
  [ "$(sed -n 's/^CapabilityBoundingSet=//p' "$unit")" = "$unit_caps" ] ||
    die "the unit's bounding set differs from its ambient set"
  unit_user=$(sed -n 's/^User=//p' "$unit")
  caps=$(for c in $unit_caps; do c=${c#CAP_}; printf '+%s,' "${c,,}"; done)
  caps=${caps%,}
  echo "user $unit_user, capabilities $caps"
  ns="sl-ans-$$"
  ip netns add "$ns" || die "cannot create a network namespace"
  netns_made=$ns
  ip -n "$ns" link set lo up
  if [ "$1" = xdp ]; then
    # the outer NIC the rendered gateway.toml names: a two-queue veth, as in the namespace tests
    ip -n "$ns" link add "$outer_if" numrxqueues 2 numtxqueues 2 type veth peer name "${outer_if}p" \
      numrxqueues 2 numtxqueues 2
    ip -n "$ns" addr add 198.18.77.1/24 dev "$outer_if"
    ip -n "$ns" link set "$outer_if" up
    ip -n "$ns" link set "${outer_if}p" up
  fi
  mkdir -p "$root/dev/net" "$root/run/wireguard"
  [ -c "$root/dev/net/tun" ] || mknod -m 0666 "$root/dev/net/tun" c 10 200
  chroot "$root" chown "$unit_user:" /run/wireguard
  cat > "$work/unit-check.sh" <<EOF
set -euo pipefail
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
chroot "$root" setpriv --reuid="$unit_user" --regid="$unit_user" --clear-groups --no-new-privs \\
  --inh-caps="$caps" --ambient-caps="$caps" --bounding-set="-all,$caps" \\
  /usr/local/bin/sluice up --config /etc/sluice/gateway.toml > "$work/sluice-unit.log" 2>&1 &
pid=\$!
for _ in \$(seq 100); do [ -S "$root/run/wireguard/sluice0.sock" ] && break; kill -0 \$pid || break; sleep 0.1; done
[ -S "$root/run/wireguard/sluice0.sock" ] || { echo "no wg API socket"; kill \$pid 2>/dev/null; exit 1; }
echo "sluice pid \$pid: uid \$(stat -c %u /proc/\$pid), \$(grep CapEff /proc/\$pid/status)"
[ "\$(stat -c %u /proc/\$pid)" != 0 ] || { echo "runs as root"; kill \$pid; exit 1; }
peers=\$(chroot "$root" wg show sluice0 peers | wc -l)
echo "wg show sluice0: \$peers peers"
exec 3<>/dev/tcp/127.0.0.1/9586
printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
health=\$(head -1 <&3 | tr -d '\r')
exec 3<&-
echo "/healthz: \$health"
kill -HUP \$pid
for _ in \$(seq 50); do grep -q 'reloaded' "$work/sluice-unit.log" && break; sleep 0.1; done
kill -TERM \$pid
rc=0
wait \$pid || rc=\$?
echo "exit after SIGTERM: \$rc"
[ "\$peers" = 4 ] && grep -q "dataplane mode=$1 " "$work/sluice-unit.log" && [ "\$health" = "HTTP/1.1 200 OK" ] && [ "\$rc" = 0 ] &&
  grep -q 'reloaded' "$work/sluice-unit.log"
EOF
  ip netns exec "$ns" unshare -m --propagation private bash "$work/unit-check.sh" ||
    { cat "$work/sluice-unit.log"; die "sluice does not run as the unit says"; }
  grep -E 'dataplane mode|reloaded' "$work/sluice-unit.log" | cut -c1-160 | sed 's/^/  log: /'
  ip netns del "$ns"
  netns_made=
  echo "ok: $1 data path: sluice runs as $unit_user with the unit's capabilities, serves wg and /healthz, reloads on SIGHUP"
}
step "the unit's user and capabilities run the rendered configuration (network namespace, socket)"
unit_runs socket

# The unit is the same for both data paths (the four capabilities); a new [dataplane] is one of
# the changes a SIGHUP reload rejects, so the role restarts sluice by itself.
step "switched to the XDP data path: gateway.toml changes, the unit does not, sluice is restarted"
outer_if="sl-ax$$"
unit_before=$(sha256sum < "$root/etc/systemd/system/sluice.service")
playbook "$root" "$work/run4.log" -e "@$here/vars/peer-added.yml" -e sluice_dataplane_mode=xdp \
  -e "sluice_outer_interface=$outer_if" ||
  { cat "$work/run4.log"; die "the xdp run failed"; }
recap "$work/run4.log"
grep -q 'RUNNING HANDLER \[sluice : Restart sluice\]' "$work/run4.log" || die "a new gateway.toml did not restart sluice"
! grep -q 'RUNNING HANDLER \[sluice : Reload sluice\]' "$work/run4.log" || die "a new gateway.toml only reloaded sluice"
[ "$(sha256sum < "$root/etc/systemd/system/sluice.service")" = "$unit_before" ] ||
  die "the unit changed with the data path"
grep -qx 'AmbientCapabilities=CAP_NET_ADMIN CAP_BPF CAP_NET_RAW CAP_IPC_LOCK' \
  "$root/etc/systemd/system/sluice.service" || die "the xdp unit does not have exactly the four capabilities"
grep -qx 'CapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF CAP_NET_RAW CAP_IPC_LOCK' \
  "$root/etc/systemd/system/sluice.service" || die "the xdp unit's bounding set is not exactly the four"
step "the unit's user and capabilities run the rendered configuration (network namespace, xdp)"
unit_runs xdp

step "a new ListenPort (the wg-quick file's [Interface], which a reload refuses): sluice is restarted"
playbook "$root" "$work/run5.log" -e "@$here/vars/peer-added.yml" -e sluice_dataplane_mode=xdp \
  -e "sluice_outer_interface=$outer_if" -e '{"sluice_listen_port": 51821}' ||
  { cat "$work/run5.log"; die "the port run failed"; }
recap "$work/run5.log"
grep -q 'RUNNING HANDLER \[sluice : Restart sluice\]' "$work/run5.log" || die "a new ListenPort did not restart sluice"
grep -q 'RUNNING HANDLER \[sluice : Note that sluice was restarted' "$work/run5.log" ||
  die "the restart is not noted (the reload would follow it)"
grep -qx 'ListenPort = 51821' "$root$cfg/sluice0.conf" || die "the new port is not in the wg-quick file"
grep -qx 'listen_port = 51821' "$root$cfg/restart-settings" || die "the new port is not in restart-settings"
! grep -qF "$key" "$root$cfg/restart-settings" || die "restart-settings holds the private key"

# --- bad inventories -------------------------------------------------------------------------------
step "bad inventories fail before anything changes"
pristine="$work/pristine"
fresh_root "$pristine"
before=$(snapshot "$pristine")
bad() { # bad VARS_FILE EXPECTED_MESSAGE
  local log="$work/bad-$(basename "$1" .yml).log"
  if playbook "$pristine" "$log" -e "@$here/vars/$1"; then
    cat "$log"; die "$1: the run succeeded"
  fi
  grep -qF -- "$2" "$log" || { cat "$log"; die "$1: no message '$2'"; }
  grep -q 'TASK \[Gathering Facts\]' "$log" && { cat "$log"; die "$1: reached the host"; }
  echo "ok: $1 fails with: $(grep -oF -- "$2" "$log" | head -1)"
}
bad bad-missing-key.yml "peer 'dave-no-key': missing public_key"
bad bad-cidr.yml "peer 'erin-bad-cidr': allowed_ips entry '10.77.0.300/32' is not a valid CIDR"
bad bad-overlap.yml "peer 'frank-overlap': allowed_ips 10.77.16.7/32 overlaps 10.77.16.0/24 of peer 'branch-office'"
[ "$(snapshot "$pristine")" = "$before" ] || die "a bad inventory changed the root"
[ ! -e "$pristine/etc/sluice" ] || die "a bad inventory created /etc/sluice"
echo "ok: the root is untouched"

# --- the HA templates (not applied yet: rendered and checked by the real tools) -------------------
step "HA templates: keepalived -t and bird -p accept them"
mkdir -p "$work/ha"
(cd "$ansible_dir" && ANSIBLE_FILTER_PLUGINS="$ansible_dir/roles/sluice/filter_plugins" \
  ansible-playbook tests/render-ha.yml -e "sluice_ha_out=$work/ha") > "$work/ha.log" 2>&1 ||
  { cat "$work/ha.log"; die "rendering the HA templates"; }
keepalived -t -f "$work/ha/keepalived.conf" || die "keepalived rejects the rendered keepalived.conf"
bird -p -c "$work/ha/bird.conf" || die "bird rejects the rendered bird.conf"
grep -q 'route 2001:db8:77::1/128 unreachable;' "$work/ha/bird.conf" || die "bird.conf lacks the IPv6 anycast prefix"
grep -q 'ExecStart=/usr/local/bin/sluice ha watch --healthz http://127.0.0.1:9586/healthz' \
  "$work/ha/sluice-anycast-watch.service" || die "the anycast watcher unit does not run sluice ha watch"
grep -q '192.0.2.10/24 dev eth0' "$work/ha/keepalived.conf" || die "keepalived.conf lacks the virtual IP"
echo "ok: keepalived.conf and bird.conf parse"

step "ansible tests passed in $((SECONDS - started)) s"
