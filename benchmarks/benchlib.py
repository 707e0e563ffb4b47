"""What every benchmark suite shares: the lab, timing, result checks, side-by-side summaries."""

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from labkit import LAB, Lab  # noqa: E402


def lab_from_status():
    res = subprocess.run([LAB, "status", "--json"], capture_output=True, text=True, check=False)
    status = json.loads(res.stdout or "{}")
    if not status.get("up"):
        raise SystemExit("the lab is down: run `make lab` first")
    return Lab(status)


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return time.monotonic() - started, result


def ok(result, what):
    if result.get("failed"):
        raise SystemExit("{} failed: {}".format(what, result.get("msg")))
    return result


def summary(samples):
    (name_a, a), (name_b, b) = samples.items()
    med_a, med_b = statistics.median(a), statistics.median(b)
    return {
        "a": name_a,
        "b": name_b,
        "median_a_s": round(med_a, 3),
        "median_b_s": round(med_b, 3),
        "ratio_b_over_a": round(med_b / med_a, 3),
        "samples_s": {name_a: [round(x, 3) for x in a], name_b: [round(x, 3) for x in b]},
    }
