#!/usr/bin/env python3
"""Tallies an Autobahn index.json; exits 1 if any case is not acceptable.

Acceptable: OK; INFORMATIONAL for the cases Autobahn itself rates informational
(7.1.6, 7.13.1, 7.13.2: "actual events are undefined by the spec"). Groups 12 and 13
(permessage-deflate) must be OK too: UNIMPLEMENTED there (the extension not negotiated)
fails the run.
"""
import collections
import json
import sys

INFORMATIONAL = {"7.1.6", "7.13.1", "7.13.2"}


def key(case):
    return tuple(int(p) for p in case.split("."))


def main(path):
    with open(path) as f:
        index = json.load(f)
    results = index["pushedge"]
    tally = collections.Counter()
    groups = collections.defaultdict(collections.Counter)
    bad = []
    for case in sorted(results, key=key):
        r = results[case]
        behavior, close = r["behavior"], r["behaviorClose"]
        tally[behavior] += 1
        groups[case.split(".")[0]][behavior] += 1
        ok = behavior == "OK" and close in ("OK", "INFORMATIONAL")
        ok = ok or (case in INFORMATIONAL and behavior == "INFORMATIONAL")
        if not ok:
            bad.append(f"  {case}: behavior={behavior} close={close}")
    print("autobahn tally:", ", ".join(f"{k} {v}" for k, v in sorted(tally.items())),
          f"({sum(tally.values())} cases)")
    for g in sorted(groups, key=int):
        print(f"  group {g:>2}: " + ", ".join(f"{k} {v}" for k, v in sorted(groups[g].items())))
    if bad:
        print("autobahn: cases not OK:")
        print("\n".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
