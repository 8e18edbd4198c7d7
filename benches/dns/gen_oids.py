#!/usr/bin/env python3
"""Write the idres import file equivalent to the harness's benchmark zone.

Usage: gen_oids.py [--count 1000000] [--arc 1.3.6.1.4.1.99999] OUT

Line n is the OID <arc>.<n> with one URL value, so that its NAPTR answer
carries the same URL as the zone's `<n>.<reversed arc>` NAPTR record
(`!^.*$!https://registry.example/oid/<n>!`).
"""
import argparse
import json

p = argparse.ArgumentParser()
p.add_argument("--count", type=int, default=1_000_000)
p.add_argument("--arc", default="1.3.6.1.4.1.99999")
p.add_argument("out")
a = p.parse_args()
with open(a.out, "w", buffering=1 << 20) as f:
    for n in range(a.count):
        f.write(json.dumps({
            "oid": f"{a.arc}.{n}",
            "values": [{"index": 1, "type": "URL",
                        "data": {"format": "string", "value": f"https://registry.example/oid/{n}"}}],
        }, separators=(",", ":")) + "\n")
