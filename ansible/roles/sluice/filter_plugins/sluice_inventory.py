"""Inventory checks for the sluice role, in plain Python (no ansible.utils / netaddr needed).

`sluice_inventory_errors` takes the host's role variables and returns a list of messages, one
per problem, each naming the peer (by `name`, else its position and key) and the offending
value. The role's validate step asserts that the list is empty, so a bad inventory fails on the
controller before anything on a host changes. The same rules as `sluice check` where the two
overlap (AllowedIPs overlapping another peer's, duplicate keys, nested prefixes within one peer
allowed), plus what only the inventory knows (missing keys, bad types).
"""

import base64
import binascii
import ipaddress
import re

IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
MODES = ("auto", "xdp", "socket")
HA_MODES = ("none", "vrrp", "anycast")


def _key_ok(value):
    """A WireGuard key: 32 bytes in standard base64 (44 characters with one '=')."""
    if not isinstance(value, str) or len(value) != 44 or not value.endswith("="):
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _cidr(value):
    """An AllowedIPs/Address entry as wg reads it: address/len, or a bare address (full length).

    Host bits may be set (wg masks them); returns an ip_network with them cleared, or None.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    addr, sep, plen = text.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if sep:
        if not plen.isdigit() or int(plen) > ip.max_prefixlen:
            return None
        length = int(plen)
    else:
        length = ip.max_prefixlen
    return ipaddress.ip_network((ip, length), strict=False)


def _peer_label(index, peer):
    if isinstance(peer, dict) and isinstance(peer.get("name"), str) and peer["name"]:
        return "peer '%s'" % peer["name"]
    key = peer.get("public_key") if isinstance(peer, dict) else None
    if isinstance(key, str) and key:
        return "peer #%d (%s)" % (index + 1, key)
    return "peer #%d" % (index + 1)


def _check_peers(peers, errors):
    if not isinstance(peers, list):
        errors.append("sluice_peers must be a list of peers, got %s" % type(peers).__name__)
        return
    seen_keys = {}
    seen_names = {}
    claimed = []  # (network, label)
    for i, peer in enumerate(peers):
        label = _peer_label(i, peer)
        if not isinstance(peer, dict):
            errors.append("%s: must be a mapping with public_key and allowed_ips" % label)
            continue
        unknown = sorted(set(peer) - {"name", "public_key", "allowed_ips", "preshared_key",
                                      "endpoint", "persistent_keepalive"})
        if unknown:
            errors.append("%s: unknown keys %s" % (label, ", ".join(unknown)))
        name = peer.get("name")
        if name is not None:
            if not isinstance(name, str) or not name or "\n" in name:
                errors.append("%s: name must be a one-line string" % label)
            elif name in seen_names:
                errors.append("%s: name also used by peer #%d" % (label, seen_names[name] + 1))
            else:
                seen_names[name] = i
        key = peer.get("public_key")
        if key is None:
            errors.append("%s: missing public_key" % label)
        elif not _key_ok(key):
            errors.append("%s: public_key '%s' is not a base64 WireGuard key" % (label, key))
        elif key in seen_keys:
            errors.append("%s: public_key already used by %s" % (label, seen_keys[key]))
        else:
            seen_keys[key] = label
        psk = peer.get("preshared_key")
        if psk is not None and not _key_ok(psk):
            errors.append("%s: preshared_key is not a base64 WireGuard key" % label)
        ka = peer.get("persistent_keepalive")
        if ka is not None and (isinstance(ka, bool) or not isinstance(ka, int)
                               or not 0 <= ka <= 65535):
            errors.append("%s: persistent_keepalive must be 0 to 65535 seconds" % label)
        endpoint = peer.get("endpoint")
        if endpoint is not None and (not isinstance(endpoint, str) or ":" not in endpoint):
            errors.append("%s: endpoint must be host:port" % label)
        allowed = peer.get("allowed_ips")
        if allowed is None:
            errors.append("%s: missing allowed_ips" % label)
            continue
        if isinstance(allowed, str):
            allowed = [allowed]
        if not isinstance(allowed, list):
            errors.append("%s: allowed_ips must be a list of CIDRs" % label)
            continue
        mine = []
        for entry in allowed:
            net = _cidr(entry)
            if net is None:
                errors.append("%s: allowed_ips entry '%s' is not a valid CIDR" % (label, entry))
                continue
            mine.append(net)
        for net in mine:
            for other, other_label in claimed:
                if net.version == other.version and net.overlaps(other):
                    errors.append("%s: allowed_ips %s overlaps %s of %s"
                                  % (label, net, other, other_label))
        claimed.extend((net, label) for net in mine)


def sluice_inventory_errors(v):
    """Every problem in the role's variables, as messages; empty when the inventory is good."""
    errors = []
    if not isinstance(v, dict):
        return ["sluice variables must be a mapping"]
    name = v.get("sluice_interface_name")
    if not isinstance(name, str) or not IFNAME.match(name):
        errors.append("sluice_interface_name '%s' must be 1-15 of A-Z a-z 0-9 _ - ." % name)
    port = v.get("sluice_listen_port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        errors.append("sluice_listen_port must be 1 to 65535, got %s" % port)
    addresses = v.get("sluice_addresses")
    if not isinstance(addresses, list) or not addresses:
        errors.append("sluice_addresses must list the tunnel's own addresses (CIDRs)")
    else:
        for a in addresses:
            if _cidr(a) is None:
                errors.append("sluice_addresses entry '%s' is not a valid CIDR" % a)
    key = v.get("sluice_private_key")
    if key and not _key_ok(key):
        errors.append("sluice_private_key is not a base64 WireGuard key (value not shown)")
    if not key and not v.get("sluice_private_key_file"):
        errors.append("neither sluice_private_key (vault) nor sluice_private_key_file is set")
    mode = v.get("sluice_dataplane_mode")
    if mode not in MODES:
        errors.append("sluice_dataplane_mode must be one of %s, got '%s'" % (", ".join(MODES), mode))
    outer = v.get("sluice_outer_interface")
    if outer and not IFNAME.match(str(outer)):
        errors.append("sluice_outer_interface '%s' is not an interface name" % outer)
    if mode == "xdp" and not outer:
        errors.append("sluice_dataplane_mode xdp needs sluice_outer_interface")
    workers = v.get("sluice_workers")
    cores = v.get("sluice_cores")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= 1024):
        errors.append("sluice_workers must be 1 to 1024, got %s" % workers)
    elif cores:
        if not isinstance(cores, list) or not all(isinstance(c, int) and c >= 0 for c in cores):
            errors.append("sluice_cores must be a list of core numbers")
        elif workers is not None and len(cores) != workers:
            errors.append("sluice_cores lists %d cores for %d workers" % (len(cores), workers))
    ha = v.get("sluice_ha_mode", "none")
    if ha not in HA_MODES:
        errors.append("sluice_ha_mode must be one of %s, got '%s'" % (", ".join(HA_MODES), ha))
    if ha == "vrrp":
        if not v.get("sluice_vrrp_virtual_ips"):
            errors.append("sluice_ha_mode vrrp needs sluice_vrrp_virtual_ips")
        rid = v.get("sluice_vrrp_router_id")
        if isinstance(rid, bool) or not isinstance(rid, int) or not 1 <= rid <= 255:
            errors.append("sluice_vrrp_router_id must be 1 to 255")
    if ha == "anycast":
        for a in v.get("sluice_anycast_prefixes") or [None]:
            if _cidr(a) is None:
                errors.append("sluice_anycast_prefixes entry '%s' is not a valid CIDR" % a)
        if not v.get("sluice_bgp_neighbors"):
            errors.append("sluice_ha_mode anycast needs sluice_bgp_neighbors")
    _check_peers(v.get("sluice_peers"), errors)
    return errors


def sluice_cidr(value):
    """Normalise one AllowedIPs entry the way the rendered file writes it (address/len)."""
    net = _cidr(value)
    if net is None:
        raise ValueError("not a CIDR: %s" % value)
    addr = value.strip().partition("/")[0]
    return "%s/%d" % (addr, net.prefixlen)


class FilterModule:
    """sluice_inventory_errors, sluice_cidr."""

    def filters(self):
        return {
            "sluice_inventory_errors": sluice_inventory_errors,
            "sluice_cidr": sluice_cidr,
        }
