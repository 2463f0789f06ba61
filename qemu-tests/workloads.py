"""Workload scenarios of the OTA suite (issue #15), on the real device:
manifests applied through the real operator CLI, reconciled by the agent
with real systemd (D-Bus) and the real filesystem of the QEMU guest.

The helpers here take an `Ota` (qemu-tests/ota.py) and are used by its
scenarios 10 to 13."""

import shlex
import time

from guest import Fail, check

HELLO_UNIT = "harmony-hello.service"
GREETING = "/data/workloads/hello/greeting.txt"


def toml_str(text):
    """A TOML basic string (JSON escaping is a subset TOML accepts)."""
    import json
    return json.dumps(text)


def file_resource(rid, path, content, mode="0644"):
    return (f"[[resource]]\nid = {toml_str(rid)}\nkind = \"file\"\npath = {toml_str(path)}\n"
            f"mode = {toml_str(mode)}\ncontent = {toml_str(content)}\n")


def unit_resource(rid, name, content, enabled=True, active=True):
    return (f"[[resource]]\nid = {toml_str(rid)}\nkind = \"systemd_unit\"\nname = {toml_str(name)}\n"
            f"content = {toml_str(content)}\nenabled = {str(enabled).lower()}\nactive = {str(active).lower()}\n")


def container_resource(rid, image, digest, archive_file, command, mounts=(), env=None, restart="always"):
    """A `kind = "container"` table: `archive_file` (a host path) is uploaded
    to the object store by `workloads apply`; mounts are (source, target,
    read_only)."""
    mounts_toml = ", ".join(f"{{ source = {toml_str(src)}, target = {toml_str(dst)}, read_only = {str(ro).lower()} }}"
                            for src, dst, ro in mounts)
    env_toml = ", ".join(f"{k} = {toml_str(v)}" for k, v in (env or {}).items())
    return (f"[[resource]]\nid = {toml_str(rid)}\nkind = \"container\"\nimage = {toml_str(image)}\n"
            f"digest = {toml_str(digest)}\narchive_file = {toml_str(str(archive_file))}\n"
            f"command = [{', '.join(toml_str(c) for c in command)}]\nenv = {{ {env_toml} }}\n"
            f"mounts = [{mounts_toml}]\nrestart = {toml_str(restart)}\n")


def hello_unit():
    """Copies the managed file to /run every 2 s: running, and reading what
    the File resource manages."""
    return ("[Unit]\nDescription=Harmony workload test: hello\n"
            "[Service]\n"
            f"ExecStart=/bin/sh -c 'while :; do cp {GREETING} /run/hello.out; sleep 2; done'\n"
            "[Install]\nWantedBy=multi-user.target\n")


class Workloads:
    def __init__(self, o):
        self.o = o
        self.n = 0

    def apply(self, *resources, gate=True):
        """Writes a manifest file and applies it to the scenario's device;
        returns the generation the operator wrote."""
        self.n += 1
        path = self.o.ctx.art / f"manifest-{self.n}.toml"
        path.write_text(f"gate_upgrades = {str(gate).lower()}\n\n" + "\n".join(resources))
        _, out = self.o.fleet.op("workloads", "apply", "-f", path, "--devices", self.o.device)
        self.o.ctx.note(f"workloads apply #{self.n}: {str(out)[:300]}")
        return out

    def status(self):
        """The device's workload status as `workloads status --device` gives it."""
        rc, out = self.o.fleet.op("workloads", "status", "--device", self.o.device, ok=False)
        return out if rc == 0 and isinstance(out, dict) else None

    def wait(self, until, timeout, what):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            s = self.status()
            if s is not None:
                last = s
                if until(s):
                    return s
            if time.monotonic() > deadline:
                self.o.save_agent_journal()
                raise Fail(f"timeout ({timeout}s) waiting for {what}; last workload status: {str(last)[:1500]}")
            time.sleep(1)

    def wait_converged(self, generation, timeout=240, boot_id=None):
        def done(s):
            st = actual(s)
            return (st is not None and st.get("observed_generation") == generation
                    and st.get("conditions", {}).get("converged")
                    and (boot_id is None or st.get("boot_id") == boot_id))
        return self.wait(done, timeout, f"generation {generation} converged" + (f" on boot {boot_id[:8]}" if boot_id else ""))

    def guest_until(self, cmd, timeout, what):
        """Polls a guest shell command until it exits 0; returns seconds taken."""
        t0 = time.monotonic()
        while True:
            rc, _ = self.o.g.sh(f"{cmd} >/dev/null 2>&1", ok=False)
            if rc == 0:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                self.o.save_agent_journal()
                raise Fail(f"timeout ({timeout}s) in the guest waiting for {what} ({cmd})")
            time.sleep(1)

    def unit_running_from_run(self, name=HELLO_UNIT):
        _, out = self.o.g.sh(f"systemctl show -p ActiveState -p FragmentPath -p UnitFileState {shlex.quote(name)}")
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        check(props.get("ActiveState") == "active", f"{name}: {props}")
        check(props.get("FragmentPath") == f"/run/systemd/system/{name}", f"{name} not from /run: {props}")
        check(props.get("UnitFileState", "").startswith("enabled"), f"{name} not enabled: {props}")
        return props


def actual(s):
    """The device's AgentStatus inside a `workloads status --device` answer."""
    if not isinstance(s, dict):
        return None
    for key in ("status", "actual", "agent_status"):
        if isinstance(s.get(key), dict):
            return s[key]
    return s if "observed_generation" in s else None
