"""One aarch64 QEMU machine (U-Boot, virtio disk overlay, user networking)
driven through a root shell on its serial console. Shared by the boot-chain
(boot_chain.py) and OTA (ota.py) suites."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

BOOT_TIMEOUT = 300


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


class Guest:
    """One QEMU machine on one disk overlay; boots can be repeated."""

    def __init__(self, image: Path, art: Path, name: str, raw=False):
        """raw=True: a sparse raw copy of disk.img instead of a qcow2 overlay,
        so the host can read what reached the disk while QEMU runs (QEMU
        writes a raw image through at once; a qcow2 overlay keeps metadata in
        QEMU's cache). Slower to create (a copy of disk.img)."""
        self.image = image
        self.art = art
        self.name = name
        self.raw = raw
        if raw:
            self.overlay = art / f"{name}.img"
            subprocess.run(["cp", "--sparse=always", str(image / "disk.img"), str(self.overlay)], check=True)
        else:
            self.overlay = art / f"{name}.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image / "disk.img"),
                            "-F", "raw", str(self.overlay)], check=True)
        self.proc = None
        self.boots = 0
        self.buf = ""
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.seq = 0
        # Extra QEMU arguments for every start, e.g. ["-rtc", "base=..."].
        self.qemu_args = []

    # -- process ------------------------------------------------------------
    # A launcher that starts QEMU as its child (runqemu) gets its own session,
    # so that a power cut can end both.
    own_session = False

    def command(self):
        """The QEMU command line of every boot."""
        return ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-smp", "2", "-m", "1024",
                "-nographic", "-monitor", "none", "-serial", "stdio",
                "-bios", str(self.image / "u-boot.bin"),
                "-drive", f"if=none,id=hd,format={'raw' if self.raw else 'qcow2'},file={self.overlay}",
                "-device", "virtio-blk-pci,drive=hd",
                "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=", *self.qemu_args]

    def start(self):
        self.boots += 1
        self.logpath = self.art / f"{self.name}.console-{self.boots}.log"
        self.log = open(self.logpath, "w", errors="replace")
        with self.lock:
            self.buf = ""
        self.t0 = time.monotonic()
        # PR_SET_PDEATHSIG would be nicer; a killed runner is handled by _terminate.
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, bufsize=0, start_new_session=self.own_session)
        threading.Thread(target=self._reader, args=(self.proc, self.log), daemon=True).start()

    def _reader(self, proc, log):
        while True:
            data = proc.stdout.read(4096)
            if not data:
                break
            text = data.decode("utf-8", "replace").replace("\r", "")
            log.write(text)
            log.flush()
            with self.cond:
                if proc is self.proc:
                    self.buf += text
                self.cond.notify_all()

    def kill(self):
        """Power cut: SIGKILL, no flush, no shutdown. A launcher in its own
        session (runqemu) is killed with its QEMU child."""
        if self.proc and self.proc.poll() is None:
            if self.own_session:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            else:
                self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self):
        self.kill()

    # -- console ------------------------------------------------------------
    def mark(self):
        with self.lock:
            return len(self.buf)

    def wait_for(self, pattern, timeout, since=0):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.buf, since)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Fail(f"timeout ({timeout}s) waiting for /{pattern}/ on the console "
                               f"(see {self.logpath.name})")
                if self.proc is None or self.proc.poll() is not None:
                    raise Fail(f"QEMU exited while waiting for /{pattern}/")
                self.cond.wait(min(left, 1.0))

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def sh(self, command, timeout=120, ok=True):
        """Run a shell command in the guest; returns (rc, output)."""
        self.seq += 1
        tag = f"H{self.seq}X"
        since = self.mark()
        # The marker is printed by printf from pieces, so an echoed command
        # line could never match it.
        self.send(f"{command} ; printf '\\n@@%s@@%s@@\\n' {tag[:1]} {tag[1:]}$?\n")
        m = self.wait_for(rf"\n@@{tag[:1]}@@{tag[1:]}(\d+)@@\n", timeout, since)
        out = self.buf[since:m.start()]
        # The previous command's prompt can straddle the mark ("harm" before
        # it, "ony# " after): drop that tail, then every whole prompt.
        prompt = "harmony# "
        for i in range(1, len(prompt) - 1):
            if out.startswith(prompt[i:]):
                out = out[len(prompt) - i:]
                break
        out = out.replace(prompt, "")
        rc = int(m.group(1))
        if ok and rc != 0:
            raise Fail(f"guest command failed (rc {rc}): {command}\n{out[-2000:]}")
        return rc, out.strip("\n")

    def boot(self, expect_slot=None, timeout=BOOT_TIMEOUT):
        """Start QEMU (if not running) and wait for the root shell; returns
        (seconds to the shell, U-Boot's slot lines of this boot)."""
        if self.proc is None:
            self.start()
        since = 0
        m = self.wait_for(r"HARMONY-CONSOLE-READY", timeout, since)
        t = time.monotonic() - self.t0
        self.sh("true", timeout=60)
        slots = re.findall(r"harmony: slot (\w)", self.buf[:m.start()])
        if expect_slot is not None:
            check(slots and slots[-1] == expect_slot,
                  f"U-Boot chose slot {slots[-1] if slots else '?'} , expected {expect_slot}")
        return t, self.buf[:m.start()]

    def reboot(self, expect_slot=None, timeout=BOOT_TIMEOUT):
        """systemctl reboot; QEMU resets in place (same process, same disk)."""
        with self.lock:
            self.buf = ""
        self.log.write("\n===== harness: reboot =====\n")
        self.t0 = time.monotonic()
        self.send("systemctl reboot\n")
        self.wait_for(r"U-Boot 20\d\d", 180)
        return self.boot(expect_slot, timeout)

    # -- helpers ------------------------------------------------------------
    def rauc_status(self):
        _, out = self.sh("rauc status --output-format=json 2>/dev/null")
        start = out.index("{")
        return json.loads(out[start:out.rindex("}") + 1])

    def env(self):
        _, out = self.sh("fw_printenv 2>/dev/null | grep -E '^BOOT_(ORDER|A_LEFT|B_LEFT)='")
        return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)

    def os_version(self):
        _, out = self.sh(". /etc/os-release; echo \"V=$VERSION_ID\"")
        return re.search(r"V=(\S*)", out).group(1)

    def wait_running(self):
        """Wait for multi-user (systemd finished starting); returns systemd-analyze's line."""
        self.sh("systemctl is-system-running --wait >/dev/null; true", timeout=240)
        _, out = self.sh("systemd-analyze time 2>/dev/null | head -n1; true")
        return out.strip()


def slot_state(status, bootname):
    for entry in status["slots"]:
        for name, s in entry.items():
            if s.get("bootname") == bootname:
                return name, s
    raise Fail(f"rauc status has no slot with bootname {bootname}")
