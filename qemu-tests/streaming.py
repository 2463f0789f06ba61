#!/usr/bin/env python3
"""RAUC HTTP streaming in the QEMU guest (issue 16, first fact).

    python3 qemu-tests/streaming.py [--only N,N] [--image DIR]

Needs an image built with the rauc-streaming stage (image/qemu/build without
--debian-rauc). The host serves the image's bundles with
qemu-tests/range_server.py (HTTP/1.1 byte ranges) on a random port; the guest
reaches it as 10.0.2.2 (QEMU user networking).

  1 streamed install of v2: the guest's rauc is the rebuilt one (no
    "configured without --enable-streaming"), nbd is loaded; `rauc info URL`
    reads the bundle over HTTP; `rauc install URL` installs it through an
    NBD device (sampled under /sys/block/nbd* during the install), with no
    copy of the bundle on /data, / or /tmp; time, requests and bytes served
    against the bundle size; the reboot runs v2 from slot B
  2 for comparison, download-then-install (what the agent does today):
    busybox wget of the whole bundle to /data, then rauc install of the file;
    time of both steps and bytes served
  3 a server that ignores Range (as python3 -m http.server does): rauc info
    and rauc install of the URL fail, with RAUC's message recorded; slot B
    is not marked for the next boot
  4 adaptive updates (block-hash-index; needs an image built with
    --with-adaptive-variant): v1 on A, streamed install of v2 into B,
    reboot into B, streamed install of v2.1 (v2 plus one small package) into
    A, reboot into A. For each install: time, requests and bytes served
    against the bundle size, and what RAUC's journal says about the adaptive
    method (the hash indices it used or built, and how many 4 KiB chunks it
    found in the target slot, the active slot, the bundle, or as zeros)

Every run writes the serial console of every boot, the server's request log
and a summary to qemu-tests/artifacts/<timestamp>-streaming/.
"""

import re
import sys

import suite
from guest import check
from range_server import RangeServer

registry = suite.Registry()
scenario = registry.scenario
GUEST_HOST = "10.0.2.2"


def serve(ctx, ranges=True):
    """The image's bundles over HTTP with ranges; stopped after the scenario."""
    srv = RangeServer(ctx.image / "bundles", 0, ranges=ranges).start()
    ctx.closers.append(srv.stop)

    def dump():
        _, log = srv.stats.snapshot()
        (ctx.art / "range-server.log").write_text(
            "".join(f"{m} /{n} {s} range={r} sent={b}\n" for m, n, s, r, b in log))
    ctx.closers.append(dump)
    return srv


def bundle_size(ctx, name):
    return (ctx.image / "bundles" / f"{name}.raucb").stat().st_size


def up(ctx, name):
    g = ctx.guest(name)
    g.boot(expect_slot="A")
    g.wait_running()
    # the network (systemd-networkd, DHCP from QEMU's user net)
    g.sh("for i in $(seq 1 60); do ip -4 addr show | grep -q 'inet 10\\.0\\.2\\.' && break; sleep 1; done; "
         "ip -4 addr show | grep 'inet 10\\.0\\.2\\.'", timeout=90)
    return g


def used_kib(g):
    """KiB used on /data, / and /tmp (df -k)."""
    _, out = g.sh("df -k /data / /tmp | tail -n +2")
    return {l.split()[-1]: int(l.split()[2]) for l in out.splitlines() if l.strip()}


@scenario(1, "streamed install of v2 over HTTP: NBD, no copy of the bundle, bytes served")
def s1(ctx):
    srv = serve(ctx)
    url = f"http://{GUEST_HOST}:{srv.port}/v2.raucb"
    size = bundle_size(ctx, "v2")
    g = up(ctx, "s1")

    _, out = g.sh("rauc --version; echo WITHOUT=$(grep -c -a 'configured without --enable-streaming' "
                  "/usr/bin/rauc); echo NBDSTR=$(grep -c -a 'rauc-nbd' /usr/bin/rauc)")
    ctx.note(" ".join(out.split()))
    check("WITHOUT=0" in out, f"the guest's rauc is built without streaming: {out}")
    _, out = g.sh("grep -w nbd /proc/modules | cut -d' ' -f1-3; ls -d /sys/block/nbd* | wc -l")
    ctx.note(f"nbd module and devices: {' '.join(out.split())}")
    check(out.startswith("nbd "), f"nbd is not loaded: {out}")

    # rauc info over HTTP
    before = srv.stats.snapshot()[0].get("v2.raucb", {"requests": 0, "bytes": 0})
    _, out = g.sh(f"s=$(date +%s.%N); rauc info {url} >/tmp/info.log 2>&1; rc=$?; e=$(date +%s.%N); "
                  "cat /tmp/info.log; echo T=$(busybox awk \"BEGIN{print $e - $s}\") RC=$rc", timeout=600)
    (ctx.art / "rauc-info.log").write_text(out + "\n")
    rc = int(re.search(r"RC=(\d+)", out).group(1))
    check(rc == 0, f"rauc info {url} failed:\n{out}")
    check("Bundle Format:" in out and "verity" in out, f"rauc info: no verity format line:\n{out}")
    after = srv.stats.snapshot()[0]["v2.raucb"]
    ctx.metric("rauc info URL (s)", float(re.search(r"T=([\d.]+)", out).group(1)))
    ctx.metric("rauc info URL: requests", after["requests"] - before["requests"])
    ctx.metric("rauc info URL: bytes served", after["bytes"] - before["bytes"])

    # the streamed install, sampled every 2 s
    u0 = used_kib(g)
    before = srv.stats.snapshot()[0]["v2.raucb"]
    g.sh("rm -f /tmp/install.rc /tmp/samples")
    _, out = g.sh(
        "sync; echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s.%N); "
        f"(rauc install {url} >/tmp/install.log 2>&1; echo $? >/tmp/install.rc) & "
        "while [ ! -f /tmp/install.rc ]; do "
        "  for d in /sys/block/nbd*; do [ \"$(cat $d/size)\" != 0 ] && echo \"NBD ${d##*/} sectors=$(cat $d/size) "
        "pid=$(cat $d/pid 2>/dev/null)\"; done; "
        "  echo \"DF $(df -k /data / /tmp | tail -n +2 | busybox awk '{printf \"%s=%s \", $6, $3}')\"; "
        "  find /data /tmp /var/tmp -xdev -name '*.raucb' -newer /tmp/info.log 2>/dev/null | sed 's/^/COPY /'; "
        "  sleep 2; done >/tmp/samples; e=$(date +%s.%N); "
        "cat /tmp/install.log; echo INST=$(busybox awk \"BEGIN{print $e - $s}\") RC=$(cat /tmp/install.rc)",
        timeout=1800)
    (ctx.art / "rauc-install.log").write_text(out + "\n")
    after = srv.stats.snapshot()[0]["v2.raucb"]
    rc = int(re.search(r"RC=(\d+)", out).group(1))
    check(rc == 0, f"rauc install {url} failed:\n{out}")
    inst = float(re.search(r"INST=([\d.]+)", out).group(1))
    _, samples = g.sh("cat /tmp/samples")
    (ctx.art / "install-samples.txt").write_text(samples + "\n")
    nbd = sorted({l.split()[1] for l in samples.splitlines() if l.startswith("NBD ")})
    copies = sorted({l for l in samples.splitlines() if l.startswith("COPY ")})
    ctx.note(f"nbd devices in use during the install: {nbd}; first sample: "
             f"{next((l for l in samples.splitlines() if l.startswith('NBD ')), None)}")
    check(nbd, "no nbd device was in use during the install (not streamed?)")
    check(not copies, f"a .raucb appeared during the install: {copies}")
    peak = {}
    for l in samples.splitlines():
        if l.startswith("DF "):
            for kv in l[3:].split():
                m, v = kv.split("=")
                peak[m] = max(peak.get(m, 0), int(v))
    grow = {m: peak.get(m, u0[m]) - u0[m] for m in u0}
    ctx.note(f"peak growth of used KiB during the install: {grow} (bundle {size // 1024} KiB)")
    check(all(v < size // 1024 // 4 for v in grow.values()),
          f"a file system grew by a quarter of the bundle or more during the install: {grow}")
    _, jlog = g.sh("journalctl -b --no-pager -o cat -u rauc | grep -i -e nbd -e stream -e http -e 'installing' "
                   "-e 'succeeded' | head -n 40; true")
    (ctx.art / "rauc-journal.txt").write_text(jlog + "\n")
    ctx.note("rauc journal: " + " | ".join(jlog.splitlines()[:6]))
    served = after["bytes"] - before["bytes"]
    ctx.metric("bundle size (bytes)", size)
    ctx.metric("rauc install URL, streamed (s)", round(inst, 1))
    ctx.metric("streamed install: requests", after["requests"] - before["requests"])
    ctx.metric("streamed install: bytes served", served)
    ctx.metric("streamed install: bytes served / bundle size", round(served / size, 3))

    t, _ = g.reboot(expect_slot="B")
    ctx.metric("reboot into the streamed slot -> root shell (s)", round(t, 1))
    check(g.os_version() == ctx.versions["v2"], "not running v2 after the reboot")


@scenario(2, "download-then-install of v2 (the agent's way today), for comparison")
def s2(ctx):
    srv = serve(ctx)
    url = f"http://{GUEST_HOST}:{srv.port}/v2.raucb"
    size = bundle_size(ctx, "v2")
    g = up(ctx, "s2")
    _, out = g.sh(f"sync; echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s.%N); "
                  f"busybox wget -q -O /data/dl.raucb {url}; rc=$?; sync; e=$(date +%s.%N); "
                  "echo DL=$(busybox awk \"BEGIN{print $e - $s}\") RC=$rc", timeout=900)
    check("RC=0" in out, f"download failed: {out}")
    dl = float(re.search(r"DL=([\d.]+)", out).group(1))
    _, out = g.sh("sync; echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s.%N); "
                  "rauc install /data/dl.raucb >/tmp/install.log 2>&1; rc=$?; e=$(date +%s.%N); "
                  "tail -n 3 /tmp/install.log; echo INST=$(busybox awk \"BEGIN{print $e - $s}\") RC=$rc",
                  timeout=1800)
    (ctx.art / "rauc-install.log").write_text(out + "\n")
    check("RC=0" in out, f"rauc install /data/dl.raucb failed:\n{out}")
    inst = float(re.search(r"INST=([\d.]+)", out).group(1))
    files, _ = srv.stats.snapshot()
    ctx.metric("bundle size (bytes)", size)
    ctx.metric("download to /data (s)", round(dl, 1))
    ctx.metric("rauc install of the local file (s)", round(inst, 1))
    ctx.metric("download + install (s)", round(dl + inst, 1))
    ctx.metric("bytes served", files["v2.raucb"]["bytes"])
    ctx.metric("copy on /data (bytes)", size)


@scenario(3, "a server without Range support: rauc info and rauc install of the URL fail")
def s3(ctx):
    srv = serve(ctx, ranges=False)
    url = f"http://{GUEST_HOST}:{srv.port}/v2.raucb"
    g = up(ctx, "s3")
    env0 = g.env()
    rc, out = g.sh(f"timeout 300 rauc info {url} 2>&1", ok=False, timeout=400)
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    (ctx.art / "rauc-info.log").write_text(out + f"\nrc={rc}\n")
    ctx.note(f"rauc info: rc {rc}: " + " | ".join(l for l in out.splitlines() if "rror" in l or "fail" in l)[-600:])
    check(rc != 0, f"rauc info of a URL without range support succeeded:\n{out}")
    _, out = g.sh(f"timeout 600 rauc install {url} >/tmp/install.log 2>&1; echo RC=$?; "
                  "grep -v '^ *[0-9]*%' /tmp/install.log", timeout=700)
    (ctx.art / "rauc-install.log").write_text(out + "\n")
    ctx.note(out.splitlines()[0])
    check("RC=0" not in out, f"rauc install of a URL without range support returned 0:\n{out}")
    ctx.note("rauc install: " + " | ".join(l for l in out.splitlines() if "rror" in l or "fail" in l)[:600])
    check("succeeded" not in out, f"rauc install of a URL without range support succeeded:\n{out}")
    env1 = g.env()
    check(env1.get("BOOT_ORDER") == env0.get("BOOT_ORDER"), f"the boot order changed: {env0} -> {env1}")
    files, _ = srv.stats.snapshot()
    ctx.metric("requests, bytes served", (files.get("v2.raucb", {}).get("requests"),
                                          files.get("v2.raucb", {}).get("bytes")))


def adaptive_journal(text):
    """RAUC's adaptive lines from its journal: the hash indices it used or
    built, its per-source chunk counts ("access stats for <source>: count=
    lookups sum=hits"; the zero chunks are counted, not looked up), and a
    fallback to a full copy if there was one."""
    # (not the hex dump of the manifest that G_MESSAGES_DEBUG adds)
    lines = [l for l in text.splitlines()
             if re.search(r"hash index|access stats|adaptive|dl_size|Continuing after", l)
             and not re.match(r"\s*[0-9a-f]{4} - ", l)]
    hits = {}
    for l in lines:
        m = re.search(r"access stats for (.+?): count=(\d+)(?: sum=([\d.]+))?", l)
        if m:
            hits[m.group(1)] = (int(m.group(2)), int(float(m.group(3) or 0)))
    return lines, hits


def streamed_install(ctx, g, srv, name, tag):
    """`rauc install URL` of bundle `name`; its time, requests, bytes served
    and RAUC's journal lines of this install (rauc.service runs with
    G_MESSAGES_DEBUG=all, so its g_info lines are there too)."""
    url = f"http://{GUEST_HOST}:{srv.port}/{name}.raucb"
    size = bundle_size(ctx, name)
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", tag)
    _, n0 = g.sh("journalctl -b -u rauc -o cat --no-pager | wc -l")
    before = srv.stats.snapshot()[0].get(f"{name}.raucb", {"requests": 0, "bytes": 0})
    _, out = g.sh("sync; echo 3 > /proc/sys/vm/drop_caches; s=$(date +%s.%N); "
                  f"rauc install {url} >/tmp/install-{slug}.log 2>&1; rc=$?; e=$(date +%s.%N); "
                  f"grep -v '^ *[0-9]*%' /tmp/install-{slug}.log | tail -n 5; "
                  "echo INST=$(busybox awk \"BEGIN{print $e - $s}\") RC=$rc", timeout=2400)
    (ctx.art / f"rauc-install-{slug}.log").write_text(out + "\n")
    check(re.search(r"RC=0\b", out) is not None, f"rauc install {url} failed:\n{out}")
    inst = float(re.search(r"INST=([\d.]+)", out).group(1))
    after = srv.stats.snapshot()[0][f"{name}.raucb"]
    _, jlog = g.sh(f"journalctl -b -u rauc -o cat --no-pager | tail -n +{int(n0.strip() or 0) + 1}", timeout=60)
    (ctx.art / f"rauc-journal-{slug}.txt").write_text(jlog + "\n")
    lines, hits = adaptive_journal(jlog)
    served = after["bytes"] - before["bytes"]
    ctx.metric(f"{tag}: bundle size (bytes)", size)
    ctx.metric(f"{tag}: rauc install URL (s)", round(inst, 1))
    ctx.metric(f"{tag}: requests", after["requests"] - before["requests"])
    ctx.metric(f"{tag}: bytes served", served)
    ctx.metric(f"{tag}: bytes served / bundle size", round(served / size, 3))
    for src, (count, hit) in hits.items():
        ctx.metric(f"{tag}: chunks from {src} (hits/lookups)", f"{hit}/{count}")
    ctx.note(f"{tag}: rauc journal, adaptive lines: " + " | ".join(lines)[:1500])
    return served, size, lines, hits


@scenario(4, "adaptive: v1 -> streamed v2 -> streamed v2.1 (one small package more): bytes against bundle size")
def s4(ctx):
    variant = ctx.manifest.get("adaptive_variant") or {}
    check("v2.1" in variant and "v2.1" in ctx.versions,
          "the image has no v2.1 bundle: build it with image/qemu/build --with-adaptive-variant")
    check(ctx.manifest.get("bundle_rootfs_adaptive") == "block-hash-index",
          f"the image's bundles are not adaptive: {ctx.manifest.get('bundle_rootfs_adaptive')}")
    ctx.note(f"v2.1 = v2 + {variant['v2.1']['extra_debs']}; mksquashfs {ctx.manifest.get('bundle_mksquashfs_args')}")
    srv = serve(ctx)
    g = up(ctx, "s4")
    # RAUC's g_info lines (which hash index it used or built) into the journal
    g.sh("mkdir -p /run/systemd/system/rauc.service.d && "
         "printf '[Service]\\nEnvironment=G_MESSAGES_DEBUG=all\\n' > /run/systemd/system/rauc.service.d/debug.conf && "
         "systemctl daemon-reload && systemctl restart rauc && systemctl show -p Environment rauc")
    _, out = g.sh("grep -n data-directory /etc/rauc/system.conf; ls -la /data/rauc")
    ctx.note("data directory: " + " ".join(out.split()))

    streamed_install(ctx, g, srv, "v2", "v1->v2 into B")
    _, out = g.sh("find /data/rauc -name block-hash-index -exec ls -l {} +")
    ctx.note("hash indices stored after v2: " + " ".join(out.split()))
    check("block-hash-index" in out, "RAUC stored no block-hash-index for the slot it wrote")
    t, _ = g.reboot(expect_slot="B")
    check(g.os_version() == ctx.versions["v2"], "not running v2 after the reboot")
    g.sh("mkdir -p /run/systemd/system/rauc.service.d && "
         "printf '[Service]\\nEnvironment=G_MESSAGES_DEBUG=all\\n' > /run/systemd/system/rauc.service.d/debug.conf && "
         "systemctl daemon-reload && systemctl restart rauc")
    g.sh("for i in $(seq 1 60); do ip -4 addr show | grep -q 'inet 10\\.0\\.2\\.' && break; sleep 1; done", timeout=90)

    served, size, lines, hits = streamed_install(ctx, g, srv, "v2.1", "v2->v2.1 into A")
    ctx.metric("v2.1: goal bytes served <= 15 % of the bundle", "met" if served <= 0.15 * size else "NOT met")
    check(any("access stats" in l for l in lines),
          "RAUC logged no adaptive access stats for the v2.1 install (did it fall back to a full copy?)")
    _, out = g.sh("find /data/rauc -name block-hash-index -exec ls -l {} +")
    ctx.note("hash indices stored after v2.1: " + " ".join(out.split()))
    t, _ = g.reboot(expect_slot="A")
    ctx.metric("reboot into v2.1 (A) -> root shell (s)", round(t, 1))
    check(g.os_version() == ctx.versions["v2.1"], "not running v2.1 after the reboot")
    _, out = g.sh("command -v less && less --version | head -n 1")
    ctx.note(f"v2.1's extra package: {' '.join(out.split())}")
    check("less" in out, "v2.1's extra package (less) is not there")


if __name__ == "__main__":
    sys.exit(suite.main(__doc__, registry, [1], "streaming"))
