"""Unit tests of the role's inventory checks (roles/sluice/filter_plugins/sluice_inventory.py).

Run: python3 -m unittest discover -s ansible/tests -p 'test_*.py'
"""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "roles", "sluice", "filter_plugins"))

import sluice_inventory as inv  # noqa: E402

KEY_A = "m7ytfWRRfxRRXMADUFkI/FhyvoAO/YYL8yXzGFydHAk="
KEY_B = "RhB+RZISrBahL9QYWZk9xPNCm8VSN4djNTF2Ek8ZcgE="
KEY_C = "2VJjdhPB35U4ACXBjvrGdc/0eo1BWh54h3/Gb0pwlB4="


def good(**over):
    v = {
        "sluice_interface_name": "sluice0",
        "sluice_listen_port": 51820,
        "sluice_addresses": ["10.77.0.1/16", "fd77::1/64"],
        "sluice_private_key": "",
        "sluice_private_key_file": "/etc/sluice/private.key",
        "sluice_dataplane_mode": "auto",
        "sluice_outer_interface": "eth0",
        "sluice_workers": 2,
        "sluice_cores": [0, 1],
        "sluice_ha_mode": "none",
        "sluice_peers": [
            {"name": "a", "public_key": KEY_A, "allowed_ips": ["10.77.0.2/32", "fd77::2/128"]},
            {"name": "b", "public_key": KEY_B, "allowed_ips": ["10.77.0.3/32"],
             "persistent_keepalive": 25},
            {"name": "c", "public_key": KEY_C, "allowed_ips": ["10.77.16.0/24", "10.77.16.0/25"]},
        ],
    }
    v.update(over)
    return v


def peers(*ps):
    return good(sluice_peers=list(ps))


class InventoryErrors(unittest.TestCase):
    def test_a_good_inventory_has_no_errors(self):
        self.assertEqual(inv.sluice_inventory_errors(good()), [])

    def test_missing_public_key_names_the_peer(self):
        errs = inv.sluice_inventory_errors(peers({"name": "dave", "allowed_ips": ["10.0.0.1/32"]}))
        self.assertEqual(errs, ["peer 'dave': missing public_key"])

    def test_missing_allowed_ips_names_the_peer(self):
        errs = inv.sluice_inventory_errors(peers({"name": "dave", "public_key": KEY_A}))
        self.assertEqual(errs, ["peer 'dave': missing allowed_ips"])

    def test_invalid_cidrs_are_named(self):
        for bad in ["10.77.0.300/32", "10.0.0.0/33", "fd77::/129", "eth0", "10.0.0.0/", "", "10.0.0.0/-1"]:
            errs = inv.sluice_inventory_errors(
                peers({"name": "erin", "public_key": KEY_A, "allowed_ips": [bad]}))
            self.assertEqual(errs, ["peer 'erin': allowed_ips entry '%s' is not a valid CIDR" % bad],
                             bad)

    def test_overlaps_between_peers_fail_in_either_order_and_family(self):
        cases = [("10.77.16.0/24", "10.77.16.7/32"), ("10.77.16.7/32", "10.77.16.0/24"),
                 ("fd77::/64", "fd77::5/128"), ("0.0.0.0/0", "192.168.1.0/24"),
                 ("10.77.0.9", "10.77.0.9/32")]
        for first, second in cases:
            errs = inv.sluice_inventory_errors(peers(
                {"name": "x", "public_key": KEY_A, "allowed_ips": [first]},
                {"name": "y", "public_key": KEY_B, "allowed_ips": [second]}))
            self.assertEqual(len(errs), 1, (first, second, errs))
            self.assertTrue(errs[0].startswith("peer 'y': allowed_ips "), errs)
            self.assertIn("of peer 'x'", errs[0])

    def test_disjoint_and_other_family_prefixes_pass(self):
        errs = inv.sluice_inventory_errors(peers(
            {"name": "x", "public_key": KEY_A, "allowed_ips": ["10.77.16.0/25", "0.0.0.0/0"]},
            {"name": "y", "public_key": KEY_B, "allowed_ips": ["::/0"]}))
        self.assertEqual(errs, [])
        errs = inv.sluice_inventory_errors(peers(
            {"name": "x", "public_key": KEY_A, "allowed_ips": ["10.77.16.0/25"]},
            {"name": "y", "public_key": KEY_B, "allowed_ips": ["10.77.16.128/25"]}))
        self.assertEqual(errs, [])

    def test_bad_and_duplicate_keys(self):
        errs = inv.sluice_inventory_errors(peers(
            {"name": "x", "public_key": KEY_A, "allowed_ips": ["10.0.0.1/32"]},
            {"name": "y", "public_key": KEY_A, "allowed_ips": ["10.0.0.2/32"]},
            {"name": "z", "public_key": "bm90IGEga2V5", "allowed_ips": ["10.0.0.3/32"]}))
        self.assertEqual(errs, ["peer 'y': public_key already used by peer 'x'",
                                "peer 'z': public_key 'bm90IGEga2V5' is not a base64 WireGuard key"])

    def test_unnamed_peers_are_named_by_position_and_key(self):
        errs = inv.sluice_inventory_errors(peers({"public_key": KEY_B, "allowed_ips": ["x"]}))
        self.assertEqual(errs, ["peer #1 (%s): allowed_ips entry 'x' is not a valid CIDR" % KEY_B])

    def test_settings(self):
        self.assertIn("sluice_listen_port must be 1 to 65535, got 0",
                      inv.sluice_inventory_errors(good(sluice_listen_port=0)))
        self.assertIn("sluice_cores lists 1 cores for 2 workers",
                      inv.sluice_inventory_errors(good(sluice_cores=[0])))
        self.assertIn("sluice_dataplane_mode xdp needs sluice_outer_interface",
                      inv.sluice_inventory_errors(good(sluice_dataplane_mode="xdp",
                                                       sluice_outer_interface="")))
        self.assertIn("sluice_addresses entry '10.1.1.1/40' is not a valid CIDR",
                      inv.sluice_inventory_errors(good(sluice_addresses=["10.1.1.1/40"])))
        errs = inv.sluice_inventory_errors(good(sluice_private_key="short"))
        self.assertEqual(errs, ["sluice_private_key is not a base64 WireGuard key (value not shown)"])
        self.assertNotIn("short", errs[0])
        self.assertIn("sluice_ha_mode vrrp needs sluice_vrrp_virtual_ips",
                      inv.sluice_inventory_errors(good(sluice_ha_mode="vrrp",
                                                       sluice_vrrp_router_id=51)))

    def test_sluice_cidr_keeps_the_address_and_adds_the_length(self):
        self.assertEqual(inv.sluice_cidr("10.77.0.9"), "10.77.0.9/32")
        self.assertEqual(inv.sluice_cidr(" fd77::2/128 "), "fd77::2/128")
        with self.assertRaises(ValueError):
            inv.sluice_cidr("10.0.0.0/33")


if __name__ == "__main__":
    unittest.main()
