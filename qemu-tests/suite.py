"""Scenario registry and runner shared by the QEMU suites: per-scenario
artifact directories, metrics, PASS/FAIL lines and the final
"N passed, N failed"."""

import argparse
import json
import signal
import sys
import time
import traceback
from pathlib import Path

from guest import Fail, Guest

REPO = Path(__file__).resolve().parents[1]


class Registry:
    def __init__(self):
        self.scenarios = {}

    def scenario(self, num, title):
        def deco(fn):
            self.scenarios[num] = (title, fn)
            return fn
        return deco


class Ctx:
    """What a scenario gets: its artifact directory, the image manifest,
    guests, metrics. `closers` run after the scenario, pass or fail."""

    def __init__(self, image, art, num):
        self.image = image
        self.art = art
        self.num = num
        self.metrics = []
        self.guests = []
        self.closers = []
        self.manifest = json.loads((image / "manifest.json").read_text())
        self.versions = self.manifest["versions"]
        self.bundles = self.manifest["bundles_in_guest"]

    def guest(self, name, raw=False):
        g = Guest(self.image, self.art, name, raw=raw)
        self.guests.append(g)
        LIVE.append(g)
        return g

    def bundle(self, name):
        return self.bundles[name]

    def metric(self, name, value):
        self.metrics.append((name, value))
        print(f"    {name}: {value}", flush=True)

    def note(self, text):
        self.metrics.append(("note", text))
        print(f"    {text}", flush=True)

    def close(self):
        for c in reversed(self.closers):
            try:
                c()
            except Exception:
                traceback.print_exc()
        for g in self.guests:
            g.stop()
            try:
                g.overlay.unlink()
            except FileNotFoundError:
                pass


LIVE = []


def _terminate(signum, frame):
    for g in LIVE:
        g.kill()
    sys.exit(128 + signum)


def main(doc, registry, ci, suite_name):
    """Runs the scenarios the command line selects; returns the exit code."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    SCENARIOS = registry.scenarios
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ci", action="store_true", help="scenarios " + ",".join(map(str, ci)))
    ap.add_argument("--all", action="store_true", help="every scenario (default)")
    ap.add_argument("--only", help="comma-separated scenario numbers")
    ap.add_argument("--image", type=Path, default=REPO / "build" / "qemu")
    args = ap.parse_args()
    nums = sorted(SCENARIOS)
    if args.ci:
        nums = list(ci)
    if args.only:
        nums = [int(n) for n in args.only.split(",")]
    if not (args.image / "manifest.json").is_file():
        print(f"no image in {args.image}: run image/qemu/build first", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    art = REPO / "qemu-tests" / "artifacts" / f"{time.strftime('%Y%m%d-%H%M%S')}-{suite_name}"
    art.mkdir(parents=True, exist_ok=True)
    print(f"artifacts: {art}", flush=True)
    passed = failed = 0
    summary = []
    for n in nums:
        title, fn = SCENARIOS[n]
        print(f"scenario {n}: {title}", flush=True)
        sdir = art / f"scenario-{n}"
        sdir.mkdir()
        ctx = Ctx(args.image, sdir, n)
        t0 = time.monotonic()
        try:
            fn(ctx)
            ok, err = True, None
        except Fail as e:
            ok, err = False, str(e)
        except Exception:
            ok, err = False, traceback.format_exc()
        finally:
            ctx.close()
        dt = time.monotonic() - t0
        if ok:
            passed += 1
            print(f"PASS scenario {n} ({dt:.0f} s)", flush=True)
        else:
            failed += 1
            print(f"FAIL scenario {n} ({dt:.0f} s): {err}", flush=True)
        summary.append({"scenario": n, "title": title, "passed": ok, "error": err, "seconds": round(dt, 1),
                        "metrics": ctx.metrics})
    (art / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1
