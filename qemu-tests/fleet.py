"""The host side of an OTA test: a real nats-server with JetStream on
loopback (the guest reaches it as 10.0.2.2 through QEMU's user network) and
the real `harmony-operator`, used only through its CLI, as an operator would.

The server runs in callout mode: only the operator's users are in its
config, and the operator's auth callout admits the device, which enrolls
itself with a token written onto its card (`enroll prepare`).

Everything lives in one directory per scenario: the NATS store, the
operator's config and keys, its copy of the fleet key, and the logs."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from guest import Fail

REPO = Path(__file__).resolve().parents[1]
NATS_SERVER = REPO / ".tools" / "venv" / "bin" / "nats-server"
OPERATOR = Path(os.environ.get("HARMONY_OPERATOR_BIN", REPO / "target" / "debug" / "harmony-operator"))
# How QEMU's user network (slirp) shows the host's loopback to the guest.
HOST_FROM_GUEST = "10.0.2.2"
# Where the guest finds the fleet CA of an https:// bundle server.
GUEST_BUNDLE_CA = "/data/harmony/bundle-ca.pem"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    def __init__(self, art: Path, manifest: dict, heartbeat_interval_secs=2,
                 commit_deadline_secs=180, bundle_http=False):
        for tool in (NATS_SERVER, OPERATOR):
            if not tool.is_file():
                raise Fail(f"{tool} is missing (qemu-tests/ota builds the operator; scripts/setup installs nats-server)")
        self.dir = art / "fleet"
        self.dir.mkdir(parents=True)
        self.logs = art
        self.manifest = manifest
        # Known once the device has enrolled (it derives its id itself).
        self.device = None
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.nats = None
        self.serve_proc = None
        self.serve_starts = 0
        # The operator's own copy of the fleet key: `keys rotate` in a
        # scenario must not touch the image's.
        self.key = self.dir / "fleet.key"
        shutil.copy2(manifest["fleet_key"], self.key)
        self.key.chmod(0o600)
        shutil.copy2(Path(manifest["fleet_key"]).with_suffix(".pub"), self.dir / "fleet.key.pub")
        self.config = self.dir / "operator.toml"
        self.heartbeat_interval_secs = heartbeat_interval_secs
        self.commit_deadline_secs = commit_deadline_secs
        # The operator's bundle server (issue 16): offers then carry its URL
        # and a token, and a device with NBD streams the bundle. "https":
        # over TLS with a certificate from a fleet CA made here (as an
        # operator does with openssl, docs/operator.md); the device is given
        # the CA (bundle_ca) on its data partition.
        self.bundle_http_port = free_port() if bundle_http else None
        # "https": TLS, HTTP/2 offered; "https-http1": TLS, HTTP/1.1 only.
        self.bundle_ca = self._make_pki() if bundle_http in ("https", "https-http1") else None
        self.bundle_http2 = bundle_http != "https-http1"
        # Callout mode, as a fleet that enrolls its devices runs: the
        # operator's users are in the server's config, every device is
        # admitted by the operator's auth callout (docs/flashing-and-enrolling.md).
        self._write_config()
        _, out = self.op("enroll", "server-config")
        (self.dir / "harmony-callout.conf").write_text(out["config"])
        self._start_nats()
        self.op("init")
        self.token = None

    def _make_pki(self):
        """A fleet CA and the bundle server's certificate for the address
        the guest reaches the host at; returns the CA's path."""
        pki = self.dir / "pki"
        pki.mkdir()
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        runs = [["req", "-x509", *ec, "-subj", "/CN=qemu-test fleet CA", "-days", "2",
                 "-keyout", "ca.key", "-out", "ca.pem"],
                ["req", *ec, "-subj", "/CN=harmony-operator bundles", "-keyout", "bundles.key", "-out", "bundles.csr"],
                ["x509", "-req", "-in", "bundles.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", "ext.cnf", "-out", "bundles.pem"]]
        (pki / "ext.cnf").write_text(f"subjectAltName=IP:{HOST_FROM_GUEST},IP:127.0.0.1\n"
                                     "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        for args in runs:
            p = subprocess.run(["openssl", *args], cwd=pki, capture_output=True, text=True)
            if p.returncode != 0:
                raise Fail(f"openssl {args[0]}: {p.stderr.strip()}")
        return pki / "ca.pem"

    # -- processes -----------------------------------------------------------
    def _write_config(self):
        lines = ["[nats]", f'url = "{self.url}"', f'nkey_seed_file = "{self.dir / "operator.nk"}"']
        lines += ["[keys]", f'signing_key = "{self.key}"',
                  # the guest's clock comes from QEMU's RTC: same as ours
                  "[fleet]", "stale_after_secs = 30", "offline_after_secs = 120",
                  "[coordinator]", 'operator_id = "qemu-test-operator"', "lease_ttl_secs = 6",
                  "commit_retry_secs = 5",
                  "[enroll]", f'issuer_seed_file = "{self.dir / "callout-issuer.nk"}"',
                  f'system_seed_file = "{self.dir / "system.nk"}"']
        if self.bundle_http_port:
            scheme = "https" if self.bundle_ca else "http"
            lines += ["[bundle_http]", f'listen = "127.0.0.1:{self.bundle_http_port}"',
                      f'public_url = "{scheme}://{HOST_FROM_GUEST}:{self.bundle_http_port}"',
                      f'cache_dir = "{self.dir / "bundle-cache"}"',
                      f'token_key = "{self.dir / "bundle-token.key"}"']
            if self.bundle_ca:
                lines += [f'tls_cert = "{self.dir / "pki" / "bundles.pem"}"',
                          f'tls_key = "{self.dir / "pki" / "bundles.key"}"']
                if not self.bundle_http2:
                    lines += ["http2 = false"]
        self.config.write_text("\n".join(lines) + "\n")

    def _start_nats(self):
        conf = self.dir / "nats.conf"
        conf.write_text(f'listen: 127.0.0.1:{self.port}\njetstream {{ store_dir: "{self.dir / "js"}" }}\n'
                        'include "harmony-callout.conf"\n')
        log = open(self.logs / "nats-server.log", "a")
        self.nats = subprocess.Popen([str(NATS_SERVER), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.nats.poll() is not None:
                    break
                time.sleep(0.1)
        raise Fail("nats-server did not start (nats-server.log)")

    def _stop_nats(self):
        if self.nats and self.nats.poll() is None:
            self.nats.terminate()
            self.nats.wait(15)
        self.nats = None

    def start_serve(self):
        self.serve_starts += 1
        log = open(self.logs / f"operator-serve-{self.serve_starts}.log", "w")
        env = dict(os.environ, HARMONY_LOG="debug")
        self.serve_proc = subprocess.Popen([str(OPERATOR), "-c", str(self.config), "serve"],
                                           stdout=log, stderr=subprocess.STDOUT, env=env)

    def kill_serve(self, sig=signal.SIGKILL):
        """Stops the coordinator; SIGKILL by default (a crash: no lease release)."""
        if self.serve_proc and self.serve_proc.poll() is None:
            self.serve_proc.send_signal(sig)
            self.serve_proc.wait(30)
        self.serve_proc = None

    def close(self):
        self.kill_serve(signal.SIGTERM)
        self._stop_nats()
        # The JetStream store and the bundle server's cache hold every
        # pushed bundle (80 MB each, per scenario); the logs stay.
        shutil.rmtree(self.dir / "js", ignore_errors=True)
        shutil.rmtree(self.dir / "bundle-cache", ignore_errors=True)

    # -- CLI -----------------------------------------------------------------
    def op(self, *args, ok=True, timeout=300):
        """Runs `harmony-operator --json ARGS`; returns (rc, parsed JSON or text)."""
        cmd = [str(OPERATOR), "-c", str(self.config), "--json", *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        with open(self.logs / "operator-cli.log", "a") as f:
            f.write(f"$ {' '.join(cmd[3:])}\n[rc {r.returncode}]\n{r.stdout}{r.stderr}\n")
        if ok and r.returncode != 0:
            raise Fail(f"harmony-operator {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
        try:
            return r.returncode, json.loads(r.stdout)
        except json.JSONDecodeError:
            return r.returncode, (r.stdout + r.stderr).strip()

    def push(self, name):
        """Pushes one of the image's bundles under its variant name (two of
        them share version 2.0.0); returns that id."""
        self.op("bundle", "push", self.manifest["bundles_on_host"][name], "--id", name, timeout=600)
        return name

    def show(self):
        """`devices show`: {"device", "heartbeat", "job"}, or None before the first heartbeat."""
        rc, out = self.op("devices", "show", self.device, ok=False)
        return out if rc == 0 and isinstance(out, dict) else None

    def rollout(self, *args):
        return self.op("rollout", *args)[1]

    # -- enrollment ------------------------------------------------------------
    def prepare_card(self, disk):
        """What a person does to a freshly written card: one token, written
        with `enroll prepare` onto the boot partition of the raw disk."""
        _, out = self.op("enroll", "token", "create", "--labels", "site=qemu", "--max-uses", "1",
                         "--expires", "3h")
        self.token = out["record"]["id"]
        self.op("enroll", "prepare", "--image", disk, "--token", out["token"],
                "--nats-url", f"nats://{HOST_FROM_GUEST}:{self.port}")

    def enrolled_device(self):
        """The id the device enrolled under with this fleet's token, or None yet."""
        _, tokens = self.op("enroll", "token", "list")
        for t in tokens:
            if t["id"] == self.token and t["devices"]:
                return t["devices"][0]
        return None

    def agent_timing_drop_in(self):
        """The test's agent timing (heartbeat interval, commit deadline), a
        drop-in for the data partition: the image's defaults (10 s, 300 s)
        would make every scenario minutes longer."""
        return (f"# qemu-tests: timing (and a bundle CA); identity comes from enrollment\n"
                f"heartbeat_interval_secs = {self.heartbeat_interval_secs}\n"
                f"[upgrade]\ncommit_deadline_secs = {self.commit_deadline_secs}\n"
                # The fleet's CA for an https:// bundle server, as a drop-in
                # names it on a real card (put there by ota.py).
                + (f'https_ca_file = "{GUEST_BUNDLE_CA}"\n' if self.bundle_ca else "") +
                # Workload drift and retries in seconds, not minutes (issue 15).
                f"[workloads]\ndrift_interval_secs = 5\nretry_initial_secs = 2\nretry_max_secs = 10\n")
