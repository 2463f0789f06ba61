"""The one reader of wic kickstart (.wks) files in this repository: the
layer's checks compare them with RAUC's system.conf, and the QEMU image
builder (image/qemu/build) lays out its disk from the same file, so both
must number partitions and name their devices exactly as wic does.
"""

import shlex
from pathlib import Path


def parse_wks(text: str, expand=None):
    """(ptable, [partition dicts]) from the text of a .wks / .wks.in file.

    Each partition has "line", "mount" (None for raw partitions), every
    --option (value, or True for a flag), "num" (the partition number wic
    gives it; None for --no-table) and, with --ondisk/--ondrive, "device".
    `expand` (a bitbake datastore's expand) resolves ${VAR} in .wks.in lines.
    """
    ptable = "msdos"
    parts = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if expand is not None and "${" in line:
            line = expand(line)
        words = shlex.split(line)
        if words[0] == "bootloader":
            if "--ptable" in words:
                ptable = words[words.index("--ptable") + 1]
            continue
        if words[0] not in ("part", "partition"):
            continue
        part = {"line": lineno, "mount": None}
        rest = words[1:]
        if rest and not rest[0].startswith("--"):
            part["mount"] = rest[0]
            rest = rest[1:]
        i = 0
        while i < len(rest):
            opt = rest[i]
            if opt.startswith("--"):
                key = opt[2:]
                if "=" in key:
                    key, val = key.split("=", 1)
                    part[key] = val
                elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                    part[key] = rest[i + 1]
                    i += 1
                else:
                    part[key] = True
            i += 1
        parts.append(part)
    # wic numbers partitions in order; with an msdos table and more than four
    # partitions the fourth becomes the extended one and the rest are logical.
    # --no-table parts (raw data such as the boot state) get no number and do
    # not count.
    in_table = [p for p in parts if not p.get("no-table")]
    num = 0
    for p in parts:
        if p.get("no-table"):
            p["num"] = None
            continue
        num += 1
        if ptable == "msdos" and len(in_table) > 4 and num == 4:
            num = 5
        p["num"] = num
        disk = p.get("ondisk") or p.get("ondrive")
        if disk:
            sep = "p" if disk[-1].isdigit() else ""
            p["device"] = f"/dev/{disk}{sep}{num}"
    return ptable, parts


def read_wks(path: Path, expand=None):
    return parse_wks(path.read_text(), expand)
