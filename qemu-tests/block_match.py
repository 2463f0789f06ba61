#!/usr/bin/env python3
"""Which 4 KiB blocks of a new slot image an adaptive (block-hash-index)
install cannot find in the images a device already has, and what they are.

    python3 qemu-tests/block_match.py NEW.ext4 HAVE.ext4 [HAVE.ext4 ...]

RAUC's block-hash-index method looks every 4 KiB block of the new image up
by its SHA-256 in the indices of the target and the active slot, wherever
the block sits there; all-zero blocks are written without a lookup. This
does the same lookups on the host, against the slot images as the builder
made them (a device's slots also carry what resize2fs and the running
system changed, so its counts differ a little), and sorts the blocks it
cannot find by ext4 metadata kind (dumpe2fs) or the type of the inode that
owns them (debugfs icheck/stat). Host-side estimate only: what is downloaded
is what the range server counts (qemu-tests/run streaming --only 4).
"""

import hashlib
import re
import subprocess
import sys

BLOCK = 4096
ZERO = hashlib.sha256(bytes(BLOCK)).digest()


def hashes(path):
    out = []
    with open(path, "rb") as f:
        while True:
            b = f.read(BLOCK)
            if not b:
                return out
            out.append(hashlib.sha256(b.ljust(BLOCK, b"\0")).digest())


def metadata_ranges(img):
    d = subprocess.run(["dumpe2fs", img], capture_output=True, text=True).stdout
    ranges = []
    for m in re.finditer(r"Inode table at (\d+)-(\d+)", d):
        ranges.append(("inode table", int(m[1]), int(m[2])))
    for kind in ("Block bitmap", "Inode bitmap"):
        for m in re.finditer(kind + r" at (\d+)", d):
            ranges.append((kind.lower(), int(m[1]), int(m[1])))
    for m in re.finditer(r"superblock at (\d+), Group descriptors at (\d+)-(\d+)", d):
        ranges.append(("superblock and group descriptors", int(m[1]), int(m[3])))
    return ranges


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    new, have = sys.argv[1], sys.argv[2:]
    blocks = hashes(new)
    known = set()
    for p in have:
        known.update(hashes(p))
    nonzero = [i for i, h in enumerate(blocks) if h != ZERO]
    missing = [i for i in nonzero if blocks[i] not in known]
    print(f"{new}: {len(blocks)} blocks, {len(nonzero)} not zero, {len(missing)} not found in "
          f"{' '.join(have)} = {len(missing) * BLOCK} bytes = {100 * len(missing) / max(len(nonzero), 1):.1f} % "
          "of the non-zero blocks")
    kinds, other = {}, []
    ranges = metadata_ranges(new)
    for b in missing:
        k = next((k for k, lo, hi in ranges if lo <= b <= hi), None)
        if k is None:
            other.append(b)
        else:
            kinds[k] = kinds.get(k, 0) + 1
    if other:
        out = subprocess.run(["debugfs", "-R", "icheck " + " ".join(map(str, other)), new],
                             capture_output=True, text=True).stdout
        owners = {}
        for line in out.splitlines()[1:]:
            f = line.split()
            if len(f) >= 2:
                owners.setdefault(f[1], []).append(f[0])
        for ino, bl in owners.items():
            if not ino.isdigit():
                kinds["no owner"] = kinds.get("no owner", 0) + len(bl)
                continue
            st = subprocess.run(["debugfs", "-R", f"stat <{ino}>", new], capture_output=True, text=True).stdout
            t = re.search(r"Type: (\w+)", st)
            k = f"{t[1] if t else '?'} blocks"
            kinds[k] = kinds.get(k, 0) + len(bl)
        kinds["(owning inodes)"] = len(owners)
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
