#!/usr/bin/env python3
"""Prints ringtree vs rotortree ratios from criterion's last run.

Each benchmark group with `ringtree` and `rotortree` members gets one line:
mean time of each, and speed ratio (rotortree time / ringtree time; > 1 means
ringtree is faster).
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
for group in sorted(p for p in root.iterdir() if p.is_dir()):
    est = {}
    for who in ("ringtree", "rotortree"):
        f = group / who / "new" / "estimates.json"
        if f.exists():
            est[who] = json.loads(f.read_text())["mean"]["point_estimate"]
    if len(est) == 2:
        ours, theirs = est["ringtree"], est["rotortree"]
        print(f"{group.name:32} ringtree {ours / 1e3:12.2f} µs  rotortree {theirs / 1e3:12.2f} µs  speed ratio {theirs / ours:5.2f}x")
