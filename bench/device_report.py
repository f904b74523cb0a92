"""Gather the outputs of bench/device_check.sh into OUT/device_check.json (and print it).

    python -m bench.device_report OUT --dry 0 --device cuda --weights FILE --videos N
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

GOALS = {"extract_clips_per_s": 3000.0, "gpu_busy_fraction": 0.80}


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def steps(out: Path) -> dict:
    res = {}
    for line in _text(out / "steps.tsv").splitlines():
        name, rc, ms = line.split("\t")
        res[name] = {"exit_code": int(rc), "seconds": int(ms) / 1000, "timed_out": int(rc) in (124, 137)}
    return res


def tests(out: Path) -> dict | None:
    try:
        root = ET.parse(out / "tests.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    a = suite.attrib
    return {k: int(a.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def extraction(out: Path) -> dict:
    log = _text(out / "extract.log")
    m = re.search(r"this process: (\d+) videos in ([\d.]+)s \(([\d.]+) videos/s, ([\d.]+) clips/s\) on (\S+) \((\w+)\)",
                  log)
    res: dict = {"completed": m is not None}
    if m:
        res.update(videos=int(m[1]), seconds=float(m[2]), videos_per_s=float(m[3]), clips_per_s=float(m[4]),
                   device=m[5], precision=m[6])
    util = []
    for row in csv.reader(_text(out / "gpu_util.csv").splitlines()):
        try:
            util.append(float(row[0]))
        except (ValueError, IndexError):
            pass
    if util:
        busy = [i for i, u in enumerate(util) if u > 0]
        span = util[busy[0]:busy[-1] + 1] if busy else util
        res["gpu_util_samples"] = len(util)
        res["gpu_busy_fraction_all"] = sum(util) / len(util) / 100
        # from the first to the last sample with a kernel running: the extraction without start-up and merge
        res["gpu_busy_fraction"] = sum(span) / len(span) / 100
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--videos", type=int, default=0)
    a = ap.parse_args()
    out = a.out
    st = steps(out)
    rep = {"dry": bool(a.dry), "device": a.device, "weights": a.weights, "videos": a.videos,
           "env": _text(out / "env.txt").splitlines()[:1], "steps": st,
           "total_seconds": round(sum(s["seconds"] for s in st.values()), 1),
           "tests": tests(out), "i3d": _json(out / "i3d.json"), "extract": extraction(out),
           "finetune": _json(out / "finetune.json")}
    tr = st.get("torchrun_two_on_one_gpu")
    rep["torchrun"] = {"one_per_gpu_ok": st.get("torchrun", {}).get("exit_code") == 0,
                       "two_on_one_gpu_refused": None if tr is None else (
                           tr["exit_code"] != 0 and "share" in _text(out / "torchrun_two_on_one_gpu.log"))}
    ex, ft = rep["extract"], rep["finetune"] or {}
    rep["goals"] = {} if a.dry else {       # the goals are GPU goals: a dry run on the CPU checks the script
        "extract_clips_per_s >= 3000": None if "clips_per_s" not in ex else ex["clips_per_s"] >= 3000,
        "gpu_busy_fraction >= 0.8": None if "gpu_busy_fraction" not in ex else ex["gpu_busy_fraction"] >= 0.8,
        "finetune limited by the device": None if "limited_by" not in ft else ft["limited_by"] == "device",
    }
    (out / "device_check.json").write_text(json.dumps(rep, indent=2) + "\n")
    print(json.dumps({k: rep[k] for k in ("dry", "device", "total_seconds", "tests", "extract", "torchrun", "goals")},
                     indent=2))
    print(f"wrote {out / 'device_check.json'}")


if __name__ == "__main__":
    main()
