"""Writing to a test disk before it boots, as whoever prepares a card would:
mtools on the boot partition (vfat), debugfs on an ext4 partition, at the
offsets of the raw disk file's MBR entries. Only for raw disks (`raw=True`
guests): a qcow2 overlay has no partition at a fixed offset."""

import struct
import subprocess
from pathlib import Path

from guest import Fail, check


def mbr_entry(path, n):
    """(start, sectors) of MBR entry n in the raw disk file: what reached the disk."""
    with open(path, "rb") as f:
        return struct.unpack_from("<II", f.read(512), 446 + 16 * n + 8)


def put_boot_file(disk, name, text):
    """A file on the boot partition (vfat, MBR entry 0) of a raw disk, as
    whoever prepares the card would put it there."""
    start, _ = mbr_entry(disk, 0)
    src = disk.parent / f"{disk.stem}.{name}"
    src.write_bytes(text.encode())
    host_run(["mcopy", "-o", "-i", f"{disk}@@{start * 512}", str(src), f"::{name}"])


def put_ext4_file(disk, entry, path, text):
    """A test fixture file in the ext4 file system of MBR entry `entry`
    (debugfs on the raw disk at the partition's offset); missing parent
    directories are made."""
    start, _ = mbr_entry(disk, entry)
    src = disk.parent / f"{disk.stem}.{Path(path).name}"
    src.write_text(text)
    src.chmod(0o644)
    dev = f"{disk}?offset={start * 512}"
    for parent in reversed(Path(path).parents[:-1]):
        host_run(["debugfs", "-w", "-R", f"mkdir {parent}", dev], ok=False)
    host_run(["debugfs", "-w", "-R", f"write {src} {path}", dev])
    out = host_run(["debugfs", "-R", f"cat {path}", dev])
    check(out == text, f"debugfs did not write {path}: {out!r}")


def host_run(cmd, ok=True):
    """A host command (mtools, debugfs) on the raw disk; its stdout."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if ok and p.returncode != 0:
        raise Fail(f"{cmd[0]} failed: {p.stderr.strip()}")
    return p.stdout
