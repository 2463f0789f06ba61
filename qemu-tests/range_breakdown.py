#!/usr/bin/env python3
"""Where in a verity bundle the bytes a streamed install read came from.

    python3 qemu-tests/range_breakdown.py BUNDLE ROOTFS_IMAGE RANGE_LOG [--keyring CA]

BUNDLE: the .raucb the range server served; ROOTFS_IMAGE: the rootfs.ext4
inside it (to find its block-hash-index, which starts with the SHA-256 of the
image's first two 4 KiB blocks); RANGE_LOG: range-server.log of a
qemu-tests/run streaming scenario. A verity bundle is the squashfs, then the
dm-verity hash tree (size from `rauc info`), then the CMS signature and its
8-byte size. Prints the served bytes of that bundle in each part; a part can
be read more than once (page cache evictions in the guest).
"""

import argparse
import hashlib
import mmap
import re
import struct
import subprocess
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("rootfs", type=Path)
    ap.add_argument("log", type=Path)
    ap.add_argument("--keyring", type=Path, help="default: keys/ca.cert.pem next to bundles/")
    a = ap.parse_args()
    keyring = a.keyring or a.bundle.resolve().parent.parent / "keys" / "ca.cert.pem"
    info = subprocess.run(["rauc", "info", f"--keyring={keyring}", str(a.bundle)],
                          capture_output=True, text=True, check=True).stdout
    verity = int(re.search(r"Verity Size:\s*(\d+)", info).group(1))
    with open(a.rootfs, "rb") as f:
        head = b"".join(hashlib.sha256(f.read(4096)).digest() for _ in range(2))
    with open(a.bundle, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        total = len(m)
        index = m.find(head)
        sig = struct.unpack(">Q", m[total - 8:])[0]
    if index < 0:
        raise SystemExit(f"the block-hash-index of {a.rootfs} is not in {a.bundle} (stored compressed?)")
    squashfs_end = total - 8 - sig - verity
    parts = [("squashfs before the hash index (image blocks, boot.vfat, manifest)", 0, index),
             ("hash index and squashfs tables", index, squashfs_end),
             ("dm-verity hash tree", squashfs_end, squashfs_end + verity),
             ("signature and its size", squashfs_end + verity, total)]
    got = [0] * len(parts)
    served = 0
    name = "/" + a.bundle.name
    for line in a.log.read_text().splitlines():
        f = line.split()
        if len(f) < 5 or f[1] != name or not f[3].startswith("range=bytes="):
            continue
        lo, hi = (int(x) for x in f[3].split("=")[2].split("-"))
        hi += 1
        served += hi - lo
        for i, (_, plo, phi) in enumerate(parts):
            got[i] += max(0, min(hi, phi) - max(lo, plo))
    print(f"{a.bundle.name}: {total} bytes; hash index at {index}, squashfs ends at {squashfs_end}, "
          f"verity tree {verity}, signature {sig}; served {served} ({served / total:.3f} of the bundle)")
    for (label, lo, hi), n in zip(parts, got):
        print(f"  {label} [{lo}, {hi}) {hi - lo} bytes: served {n} ({100 * n / max(served, 1):.0f} %)")


if __name__ == "__main__":
    main()
