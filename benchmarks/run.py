"""Benchmarks on the lab, side by side in one run, reported as ratios.

    python benchmarks/run.py [--rounds N] [SUITE ...]

Every suite runs the same work two or more ways, interleaved (A, B, A, B, ...) so that all
see the same machine load, and reports medians and ratios; none is a timed assertion.
Each suite writes benchmarks/results/<suite>.json and its section of
benchmarks/results/latest.md (the other suites' sections are kept); on a lab brought up with
another lock manager than lockd (lab up --lock-manager sanlock) the results are
<suite>-<lock manager>.json and the section "<suite> (<lock manager>)", beside lockd's, and only
the suites that name that lock manager in LOCK_MANAGERS run. Needs the lab (make lab) and the
venv (make venv).
"""

import argparse
import importlib
import json
import os
import re
import sys
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from benchlib import RESULTS, lab_from_status  # noqa: E402

# suite name -> module in benchmarks/ with NAME and run(lab, rounds) -> (report dict, markdown)
SUITES = [
    "handoff",
    "evacuate",
    "converge",
]


def write_section(name, at, markdown):
    path = os.path.join(RESULTS, "latest.md")
    text = open(path).read() if os.path.exists(path) else "# Latest benchmark results\n"
    section = "## {}\n\n_run {}_\n\n{}\n".format(name, at, markdown.strip())
    pattern = re.compile(r"^## {}\n.*?(?=^## |\Z)".format(re.escape(name)), re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as fh:
        fh.write(text.rstrip("\n") + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("suites", nargs="*", metavar="SUITE", help="one of: " + ", ".join(SUITES))
    args = parser.parse_args()
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        parser.error("unknown suite(s): {}; known: {}".format(", ".join(unknown), ", ".join(SUITES)))
    lab = lab_from_status()
    os.makedirs(RESULTS, exist_ok=True)
    lm = lab.lock_manager
    for name in args.suites or SUITES:
        suite = importlib.import_module(name)
        if lm not in getattr(suite, "LOCK_MANAGERS", ("lockd",)):
            if args.suites:
                parser.error("suite {} runs on a lockd lab only; this lab runs {}".format(name, lm))
            print("## {}: skipped, runs on a lockd lab only (this lab runs {})".format(name, lm))
            continue
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        report, markdown = suite.run(lab, args.rounds)
        report = dict(report, at=at, rounds=args.rounds, accel=lab.status.get("accel"), lock_manager=lm)
        key, section = (name, name) if lm == "lockd" else ("{}-{}".format(name, lm), "{} ({})".format(name, lm))
        with open(os.path.join(RESULTS, key + ".json"), "w") as fh:
            json.dump(report, fh, indent=2)
        write_section(section, at, markdown)
        print("## " + section)
        print(markdown)
    print("results: benchmarks/results/latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
