"""Checks on where the A/B boot state lives (ADR 0004 decision 3): two raw
copies between the MBR and the first partition of the whole disk.

  boot-env-location  the wks rawcopy lines, fw_env.config, the boot script's
                     block numbers and the Pi's U-Boot fragment name the same
                     two offsets and size; the copies fit before the first
                     partition; the image writes the layer's initial state
                     there (harmony-boot-env), which commits both slots
  boot-state-raw     nothing in the boot chain keeps the boot state in files
                     on the boot partition any more (uboot.env, fatwrite,
                     ENV_IS_IN_FAT, a confirmation that needs /boot/firmware),
                     and the fragment uses no option U-Boot 2026.01 ignores
"""

import re
from pathlib import Path

import bootenv

UBOOT_DIR = "recipes-bsp/u-boot"
UBOOT_BBAPPEND = "recipes-bsp/u-boot/u-boot_%.bbappend"
FRAGMENT = "harmony-env-redund.cfg"
CONFIRM_UNIT = "recipes-bsp/u-boot/files/harmony-boot-confirm.service"
IMAGE = "recipes-core/images/harmony-image.bb"
SECTOR = 512
# Kconfig names that U-Boot 2026.01 (oe-core wrynose) no longer has: a
# fragment line with one of them is silently dropped by merge_config.
RENAMED = {
    "CONFIG_SYS_REDUNDAND_ENVIRONMENT": "CONFIG_ENV_REDUNDANT",
    "CONFIG_SYS_MMC_ENV_DEV": "CONFIG_ENV_MMC_DEVICE_INDEX",
    "CONFIG_SYS_MMC_ENV_PART": "CONFIG_ENV_MMC_EMMC_HW_PARTITION",
}


def read_fragment(path: Path):
    """{CONFIG_NAME: value} of a Kconfig fragment; "n" for `# ... is not set`."""
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        m = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if m:
            out[m.group(1)] = "n"
            continue
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        out[name.strip()] = value.strip().strip('"')
    return out


def script_code(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def script_blocks(code: str):
    """The boot script's harmony_env_blk1/_blk2/_blks (hex block numbers)."""
    out = {}
    for name in ("harmony_env_blk1", "harmony_env_blk2", "harmony_env_blks"):
        m = re.search(r"^\s*setenv %s (0x[0-9a-fA-F]+)\s*$" % name, code, re.M)
        out[name] = int(m.group(1), 16) if m else None
    return out


def _fragments(ctx, machine):
    """The .cfg fragments the layer gives this machine's U-Boot."""
    d = ctx.recipe(UBOOT_BBAPPEND, machine)
    return [u[len("file://"):].split(";", 1)[0] for u in (d.getVar("SRC_URI") or "").split()
            if u.startswith("file://") and u.split(";", 1)[0].endswith(".cfg")]


def check_boot_env_location(ctx, read_fw_env, wks_for, boot_script, read_system_conf):
    problems = []
    try:
        size = bootenv.recipe_size(ctx.layer)
    except (bootenv.BootEnvError, OSError) as e:
        return [str(e)]
    script = boot_script(ctx)
    blocks = script_blocks(script_code(script.read_text())) if script.is_file() else {}
    recipe = (ctx.layer / bootenv.RECIPE).read_text()
    if not re.search(r"\bmkenvimage -r -s \$\{HARMONY_BOOT_ENV_SIZE\}", recipe):
        problems.append(f"{bootenv.RECIPE}: does not make the copy with mkenvimage -r -s ${{HARMONY_BOOT_ENV_SIZE}}")
    if not re.search(r"\$\{DEPLOYDIR\}/%s\b" % re.escape(bootenv.BLOB), recipe):
        problems.append(f"{bootenv.RECIPE}: does not deploy {bootenv.BLOB}, which the wks rawcopy lines write")
    if blocks.get("harmony_env_blks") is None or blocks["harmony_env_blks"] * SECTOR != size:
        problems.append(f"boot.cmd.in: harmony_env_blks is {blocks.get('harmony_env_blks')} blocks, "
                        f"a copy is {size:#x} bytes ({bootenv.RECIPE})")
    for machine in ctx.machines:
        where = f"[{machine}]"
        try:
            wks_path, (_, parts) = wks_for(ctx, machine)
            env = read_fw_env(ctx.machine_file("recipes-bsp/libubootenv", machine, "fw_env.config"))
            offsets = bootenv.copy_offsets(parts)
        except Exception as e:  # CheckError, BootEnvError
            problems.append(f"{where} {e}")
            continue
        copies = bootenv.copy_parts(parts)
        if len(copies) != 2:
            problems.append(f"{where} {wks_path.name}: {len(copies)} rawcopy lines of {bootenv.BLOB}, want 2 (two copies)")
            continue
        for p in copies:
            if not p.get("no-table"):
                problems.append(f"{where} {wks_path.name}:{p['line']}: the boot state copy is a partition (no --no-table)")
        disks = {p.get("ondisk") or p.get("ondrive") for p in parts if not p.get("no-table")}
        copy_disks = {p.get("ondisk") or p.get("ondrive") for p in copies}
        if len(disks) != 1 or copy_disks != disks:
            problems.append(f"{where} {wks_path.name}: the copies are on {sorted(map(str, copy_disks))}, "
                            f"the partitions on {sorted(map(str, disks))}")
        disk = f"/dev/{next(iter(disks))}" if len(disks) == 1 else None
        # the copies: apart, after the MBR, before the first partition
        spans = sorted((o, o + size) for o in offsets)
        if spans[0][0] < SECTOR or spans[0][1] > spans[1][0]:
            problems.append(f"{where} {wks_path.name}: copies at {[hex(o) for o in offsets]} overlap the MBR or each other")
        first = next((p for p in parts if not p.get("no-table")), None)
        if first is not None:
            start = bootenv.offset_bytes(first["offset"]) if "offset" in first else int(first.get("align", 1024)) * 1024
            if spans[1][1] > start:
                problems.append(f"{where} {wks_path.name}: copy ends at {spans[1][1]:#x}, the first partition "
                                f"starts at {start:#x}")
        if any(o % SECTOR for o in offsets):
            problems.append(f"{where} {wks_path.name}: offsets {[hex(o) for o in offsets]} are not whole sectors")
        # fw_env.config: the same two copies on the whole disk
        have = [(e["device"], e["offset"], e["size"]) for e in env]
        want = [(disk, o, size) for o in offsets]
        if have != want:
            problems.append(f"{where} fw_env.config has {[(d, hex(o), hex(s)) for d, o, s in have]}, "
                            f"the wks and {Path(bootenv.RECIPE).name} say {[(d, hex(o), hex(s)) for d, o, s in want]}")
        # the boot script's block numbers
        for n, off in enumerate(offsets, 1):
            blk = blocks.get(f"harmony_env_blk{n}")
            if blk is None or blk * SECTOR != off:
                problems.append(f"{where} boot.cmd.in: harmony_env_blk{n} = {blk if blk is None else hex(blk)}, "
                                f"the wks puts copy {n} at {off:#x} (block {off // SECTOR:#x})")
        # the machine's own U-Boot, where the layer configures it
        frags = _fragments(ctx, machine)
        if machine.startswith("raspberrypi") and FRAGMENT not in frags:
            problems.append(f"{where} {UBOOT_BBAPPEND}: the Pi's U-Boot does not get {FRAGMENT}")
        if FRAGMENT in frags:
            cfg = read_fragment(ctx.layer / UBOOT_DIR / "files" / FRAGMENT)
            want_cfg = {"CONFIG_ENV_IS_IN_MMC": "y", "CONFIG_ENV_IS_IN_FAT": "n", "CONFIG_ENV_REDUNDANT": "y",
                        "CONFIG_ENV_APPEND": "y", "CONFIG_ENV_MMC_DEVICE_INDEX": "0",
                        "CONFIG_ENV_OFFSET": offsets[0], "CONFIG_ENV_OFFSET_REDUND": offsets[1],
                        "CONFIG_ENV_SIZE": size}
            for key, value in want_cfg.items():
                got = cfg.get(key)
                if isinstance(value, int):
                    try:
                        ok = got is not None and int(got, 0) == value
                    except ValueError:
                        ok = False
                    shown = hex(value)
                else:
                    ok, shown = got == value, value
                if not ok:
                    problems.append(f"{where} {FRAGMENT}: {key} is {got}, want {shown}"
                                    + (" (the copies would not be U-Boot's own environment)" if key != "CONFIG_ENV_APPEND"
                                       else " (the copies hold only the boot state: without it they replace the "
                                            "default environment, bootcmd included)"))
        # the initial state commits both slots, first slot first
        try:
            sc = read_system_conf(ctx.machine_file("recipes-core/rauc", machine, "system.conf"))
        except Exception as e:
            problems.append(f"{where} {e}")
            continue
        slots = sorted(s for s in sc.sections() if s.startswith("slot.rootfs."))
        names = [sc[s].get("bootname") for s in slots]
        committed = sc.get("system", "boot-attempts", fallback=None)
        init = {}
        for ln in (ctx.layer / bootenv.TEXT).read_text().splitlines():
            if ln.strip() and not ln.lstrip().startswith("#") and "=" in ln:
                k, _, v = ln.partition("=")
                init[k.strip()] = v.strip()
        if init.get("BOOT_ORDER") != " ".join(names):
            problems.append(f"{where} {Path(bootenv.TEXT).name}: BOOT_ORDER={init.get('BOOT_ORDER')}, "
                            f"want the slots in order: {' '.join(map(str, names))}")
        for b in names:
            if init.get(f"BOOT_{b}_LEFT") != committed:
                problems.append(f"{where} {Path(bootenv.TEXT).name}: BOOT_{b}_LEFT={init.get(f'BOOT_{b}_LEFT')}, "
                                f"a flashed slot is committed (system.conf boot-attempts={committed})")
        image = ctx.recipe(IMAGE, machine)
        if "harmony-boot-env:do_deploy" not in (image.getVarFlag("do_image_wic", "depends") or "").split():
            problems.append(f"{where} {IMAGE}: do_image_wic does not depend on harmony-boot-env:do_deploy "
                            f"(wic would not find {bootenv.BLOB})")
    return problems


def check_boot_state_raw(ctx, read_fw_env, boot_script):
    problems = []
    script = boot_script(ctx)
    code = script_code(script.read_text()) if script.is_file() else ""
    for pattern, what in ((r"\bfatwrite\b", "writes a file with fatwrite"),
                          (r"\b[\w-]+\.env\b", "names an environment file"),
                          (r"\bsaveenv\b", "uses saveenv (U-Boot's own location, pflash in QEMU)")):
        m = re.search(pattern, code)
        if m:
            problems.append(f"boot.cmd.in {what} ({m.group(0)}): the boot state is the raw copies only")
    for verb in ("read", "write"):
        if not re.search(r"\$\{devtype\} %s \$\{harmony_buf1\} \$\{\w+\} \$\{harmony_env_blks\}" % verb, code):
            problems.append(f"boot.cmd.in does not {verb} the copies with `${{devtype}} {verb}`")
    for machine in ctx.machines:
        try:
            env = read_fw_env(ctx.machine_file("recipes-bsp/libubootenv", machine, "fw_env.config"))
        except Exception as e:
            problems.append(f"[{machine}] {e}")
            continue
        for e in env:
            dev = e["device"]
            if not dev.startswith("/dev/") or re.search(r"(\d+p\d+|[a-z]d[a-z]\d+)$", dev):
                problems.append(f"[{machine}] fw_env.config line {e['line']}: {dev} is not a whole-disk device "
                                "(the copies are raw on the disk, not in a file or a partition)")
    frag = ctx.layer / UBOOT_DIR / "files" / FRAGMENT
    if frag.is_file():
        cfg = read_fragment(frag)
        for key in cfg:
            if key in RENAMED:
                problems.append(f"{FRAGMENT}: {key} does not exist in U-Boot 2026.01 (it is {RENAMED[key]}); "
                                "merge_config drops it silently")
            if key.startswith("CONFIG_ENV_FAT_") or (key == "CONFIG_ENV_IS_IN_FAT" and cfg[key] != "n"):
                problems.append(f"{FRAGMENT}: {key}={cfg[key]}: U-Boot's environment back on the boot partition")
    unit = ctx.layer / CONFIRM_UNIT
    if unit.is_file() and re.search(r"^(Requires|BindsTo|RequiresMountsFor)=.*(boot-firmware\.mount|/boot/firmware)",
                                    unit.read_text(), re.M):
        problems.append(f"{CONFIRM_UNIT}: needs the boot partition mounted, but the boot state is not on it")
    return problems
