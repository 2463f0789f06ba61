"""The boot region (ADR 0004 decisions 1 and 4): RAUC's boot-mbr-switch slot
and the disk layout that carries it, as the layer defines them:

  system.conf [slot.<class>.0] type=boot-mbr-switch   device, region-start,
                                                      region-size
  the wks                                             where wic puts every
                                                      part (this module lays
                                                      it out as wic does)

RAUC 1.8's rules for such a slot (src/mbr.c, docs "Update Boot Partition in
MBR"), which the check below applies to the layer's files:
  - the boot partition is MBR entry 0, i.e. partition 1 of an msdos table;
  - region-start is a multiple of the sector size, region-size a multiple of
    two sectors, and the region lies after the MBR and inside the disk;
  - entry 0 starts at region-start or at region-start + region-size / 2 and
    RAUC gives the partition it switches to region-size / 2 sectors, so the
    boot partition is exactly half the region;
  - no other entry of the table may reach into the region.
The layer's checks (boot-region), the QEMU image builder (image/qemu/build)
and qemu-tests read the region through this module.
"""

import configparser
import re

SECTOR = 512
MBR_OVERHEAD_SECTORS = 1
SLOT_TYPE = "boot-mbr-switch"


class RegionError(Exception):
    pass


def rauc_size(value: str) -> int:
    """A RAUC size value (bytes, optional K/M/G/T suffix, powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)\s*", str(value))
    if not m:
        raise RegionError(f"cannot read the RAUC size {value!r}")
    return int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")


def wic_size(value: str, default_unit: str) -> int:
    """A wic size (--size/--fixed-size: MiB unless suffixed; --offset: KiB
    unless suffixed; s = 512-byte sectors) in bytes."""
    m = re.fullmatch(r"(\d+)([sSkKmMgG]?)", str(value).strip())
    if not m:
        raise RegionError(f"cannot read the wks size {value!r}")
    unit = (m.group(2) or default_unit).lower()
    return int(m.group(1)) * {"s": 512, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit]


def layout(parts, raw_sizes=None):
    """Byte start and size of every wks part, placed as wic's msdos layout
    does: one sector for the MBR, then each part in order at its --offset,
    or at the next multiple of its --align (KiB), or right after the part
    before. `raw_sizes(part)` gives the size of a part without --size /
    --fixed-size (the rawcopy file). Returns [(part, start, size)]."""
    pos = MBR_OVERHEAD_SECTORS * SECTOR
    out = []
    for p in parts:
        if "offset" in p:
            start = wic_size(p["offset"], "k")
            if start < pos:
                raise RegionError(f"wks line {p['line']}: --offset {p['offset']} is before the end of "
                                  f"the part before it ({pos} bytes)")
        else:
            start = pos
            if p.get("align"):
                step = int(p["align"]) * 1024
                start = -(-pos // step) * step
        size_text = p.get("fixed-size") or p.get("size")
        if size_text:
            size = wic_size(size_text, "m")
        elif raw_sizes is not None:
            size = raw_sizes(p)
        else:
            raise RegionError(f"wks line {p['line']}: no --size/--fixed-size")
        out.append((p, start, size))
        pos = start + size
    return out


def raw_sizes(env_size: int):
    """layout()'s size for parts without --size: the boot state copies
    (bootenv's rawcopy lines) are env_size bytes; anything else is an error."""
    import bootenv

    def size(part):
        if part in bootenv.copy_parts([part]):
            return env_size
        raise RegionError(f"wks line {part['line']}: no size and not a boot state copy")
    return size


def boot_slots(sc: configparser.ConfigParser):
    """[(section, device, region-start, region-size)] of the boot-mbr-switch slots."""
    out = []
    for s in sc.sections():
        if s.startswith("slot.") and sc[s].get("type") == SLOT_TYPE:
            try:
                out.append((s, sc[s].get("device"), rauc_size(sc[s].get("region-start", "")),
                            rauc_size(sc[s].get("region-size", ""))))
            except RegionError as e:
                raise RegionError(f"[{s}] {e}")
    return out


def slot_class(section: str) -> str:
    """slot.bootloader.0 -> bootloader"""
    return section.split(".")[1]


def problems(sc: configparser.ConfigParser, parts, raw_sizes):
    """What in this machine's system.conf and wks breaks RAUC's rules for the
    boot region, or the layout the boot chain relies on (empty: none)."""
    out = []
    try:
        slots = boot_slots(sc)
    except RegionError as e:
        return [str(e)]
    if len(slots) != 1:
        return [f"system.conf has {len(slots)} {SLOT_TYPE} slots, want 1 (the boot files)"]
    section, device, start, size = slots[0]
    for key in ("bootname", "parent"):
        if key in sc[section]:
            out.append(f"[{section}] has a {key}: the boot region belongs to neither rootfs slot")
    try:
        placed = layout(parts, raw_sizes)
    except RegionError as e:
        return out + [str(e)]
    table = [(p, s, n) for p, s, n in placed if not p.get("no-table")]
    disks = {p.get("ondisk") or p.get("ondrive") for p, _, _ in table}
    if len(disks) != 1 or device != f"/dev/{next(iter(disks))}":
        out.append(f"[{section}] device={device}, the wks partitions are on {sorted(map(str, disks))} "
                   "(RAUC needs the whole disk: it rewrites its MBR)")
    if start % SECTOR or start < SECTOR:
        out.append(f"[{section}] region-start={start} is not a whole sector after the MBR")
    if size <= 0 or size % (2 * SECTOR):
        out.append(f"[{section}] region-size={size} is not a multiple of two sectors")
    end = start + size
    if not table:
        return out + ["the wks has no partitions"]
    boot, bstart, bsize = table[0]
    if boot.get("num") != 1 or boot.get("fstype") != "vfat" or boot.get("mount") != "/boot/firmware":
        out.append(f"wks line {boot['line']}: the first partition (MBR entry 0, which RAUC switches) is "
                   f"{boot.get('mount')} {boot.get('fstype')} number {boot.get('num')}, not the vfat boot "
                   "partition /boot/firmware number 1")
    if bstart != start:
        out.append(f"wks line {boot['line']}: the boot partition starts at {bstart:#x}, region-start is "
                   f"{start:#x} (RAUC finds no active half)")
    if bsize * 2 != size:
        out.append(f"wks line {boot['line']}: the boot partition is {bsize} bytes, half of region-size is "
                   f"{size // 2} (a switch would change its size)")
    for p, s, n in table[1:]:
        if s < end and s + n > start:
            out.append(f"wks line {p['line']}: partition {p.get('num')} ({p.get('mount')}) at "
                       f"{s:#x}..{s + n:#x} reaches into the boot region {start:#x}..{end:#x}")
    for p, s, n in placed:
        if p.get("no-table") and p.get("source") and s < end and s + n > start:
            out.append(f"wks line {p['line']}: --source {p['source']} writes into the boot region "
                       f"{start:#x}..{end:#x} (the half not in use is RAUC's)")
    reserved = [(s, n) for p, s, n in placed if p.get("no-table") and not p.get("source")]
    if not any(s == start + size // 2 and n == size // 2 for s, n in reserved):
        out.append(f"the wks does not reserve the second half of the boot region ({start + size // 2:#x}, "
                   f"{size // 2} bytes) with a --no-table line: a later partition could be placed there")
    return out
