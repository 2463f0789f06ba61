//! `harmony-operator enroll prepare` (issue #14): write the enrollment file
//! ([`ENROLL_FILE_NAME`]) onto the boot (FAT) partition of a disk image
//! (`.wic`, `.img`) or of a flashed card (`/dev/sdX`, `/dev/mmcblk0`)
//! without mounting anything, so it works on a laptop without root for image
//! files.
//!
//! How it works: the MBR partition table is read here (GPT is refused), the
//! first primary partition with a FAT type (0x06, 0x0b, 0x0c, 0x0e) whose
//! first sector is a FAT boot sector is the boot partition, and mtools writes
//! the file at that partition's byte offset (`mcopy -i TARGET@@OFFSET`).
//! The file is read back with `mtype` and compared before this returns.
//!
//! # Calling it from the CLI
//!
//! ```text
//! harmony-operator enroll prepare (--image FILE.wic | --device /dev/sdX) --token hfe1_... \
//!     --nats-url tls://... [--ca ca.pem] [--overwrite]
//! ```
//!
//! The CLI builds an [`EnrollFile`] (token, NATS URLs, CA PEM read from the
//! file if given), calls [`prepare`]`(path, &file, overwrite)` and prints the
//! returned [`PreparedCard`] (its `Display` is a one-line summary; it holds
//! no secret). On error it prints the [`PrepareError`] (each message says
//! what to do) and exits non-zero. `--image` and `--device` only differ in
//! what the user means; both are passed as `target`, and [`prepare`] checks
//! that a file is a regular file and a device a block device. Never print or
//! log the token, nor the `EnrollFile` (its `Debug` includes the token).

use harmony_protocol::enroll::{EnrollFile, ENROLL_FILE_NAME, TOKEN_PREFIX};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Sector size assumed for the partition table. SD cards, USB card readers
/// and the images the layer builds all use 512-byte logical sectors.
pub const SECTOR: u64 = 512;

/// MBR partition types that hold a FAT file system.
pub const FAT_PARTITION_TYPES: [u8; 4] = [0x06, 0x0b, 0x0c, 0x0e];

/// Why preparing a card failed. Nothing was written unless the variant says
/// so ([`PrepareError::Mtools`] from `mcopy` and
/// [`PrepareError::VerifyFailed`] may leave a partial file behind). No
/// message contains the token.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(
        "the enrollment token does not look like a token: it must be `{TOKEN_PREFIX}<12 hex digits>_<43 \
         characters>`, with no spaces (pass the whole value `harmony-operator enroll token create` printed)"
    )]
    BadToken,
    #[error("the enrollment file names no NATS URL: the device would not know where to enroll")]
    NoNatsUrls,
    #[error("cannot serialize the enrollment file: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("{}: no such file or device (for a card: is it inserted? see `lsblk`)", .0.display())]
    TargetMissing(PathBuf),
    #[error("{}: neither a disk image file nor a block device", .0.display())]
    NotImageOrDevice(PathBuf),
    #[error("{}: mtools cannot address this path (not UTF-8, or contains `@@`): rename or symlink it", .0.display())]
    UnusablePath(PathBuf),
    #[error(
        "{}: permission denied (a card reader's device usually needs root or the `disk` group: \
         run with sudo, or write the image file before flashing it)",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: has {size}-byte sectors; only 512-byte sectors (SD cards, most readers) are supported", path.display())]
    SectorSize { path: PathBuf, size: u64 },
    #[error("{}: no partition table: {detail}", path.display())]
    NoPartitionTable { path: PathBuf, detail: String },
    #[error(
        "{}: has a GPT partition table, which `enroll prepare` does not support (the images the layer builds \
         are MBR); write the enrollment file with mtools by hand, or mount the boot partition",
        .0.display()
    )]
    Gpt(PathBuf),
    #[error("{}: no FAT (boot) partition: {detail}", path.display())]
    NoFatPartition { path: PathBuf, detail: String },
    #[error(
        "{}: is mounted ({source_dev} on {mount_point}); unmount it first (`umount {source_dev}`), \
         writing under a mounted file system corrupts it",
        path.display()
    )]
    Mounted { path: PathBuf, source_dev: String, mount_point: String },
    #[error("cannot check whether {} is mounted: {detail}", path.display())]
    MountCheck { path: PathBuf, detail: String },
    #[error("`{tool}` not found: install mtools (Debian/Ubuntu: `sudo apt-get install mtools`)")]
    MtoolsMissing { tool: String },
    #[error(
        "{}: partition {partition} already has {ENROLL_FILE_NAME}; pass --overwrite to replace it",
        path.display()
    )]
    AlreadyPresent { path: PathBuf, partition: u8 },
    #[error("`{tool}` failed on {} ({status}): {stderr}", path.display())]
    Mtools { tool: String, path: PathBuf, status: String, stderr: String },
    #[error(
        "{}: {ENROLL_FILE_NAME} read back from partition {partition} differs from what was written \
         ({written} bytes written, {read} read back); the card may be faulty",
        path.display()
    )]
    VerifyFailed { path: PathBuf, partition: u8, written: usize, read: usize },
}

/// What [`prepare`] wrote, and where. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedCard {
    /// The image or device, as given.
    pub target: PathBuf,
    /// Whether `target` is a block device (else an image file).
    pub block_device: bool,
    /// MBR partition number, 1 to 4 (`/dev/sdX1` is 1).
    pub partition: u8,
    /// MBR partition type (0x0c is FAT32 with LBA).
    pub partition_type: u8,
    /// Byte offset of the partition from the start of `target`.
    pub offset: u64,
    /// Size of the partition in bytes.
    pub size: u64,
    /// Path of the file inside the FAT file system (`::/harmony-enroll.toml`).
    pub path_written: String,
    /// Size of the file written.
    pub bytes: usize,
    /// Whether an existing enrollment file was replaced.
    pub replaced: bool,
}

impl fmt::Display for PreparedCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({} bytes) on partition {} (type 0x{:02x}, offset {}) of {}; verified",
            if self.replaced { "replaced" } else { "wrote" },
            ENROLL_FILE_NAME,
            self.bytes,
            self.partition,
            self.partition_type,
            self.offset,
            self.target.display()
        )
    }
}

/// One primary MBR partition entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrPartition {
    /// 1 to 4.
    pub number: u8,
    pub kind: u8,
    pub start_lba: u64,
    pub sectors: u64,
}

impl MbrPartition {
    pub fn offset(&self) -> u64 {
        self.start_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// Where mtools' programs are found: on `PATH` (the default) or in one
/// directory (tests).
#[derive(Debug, Clone, Default)]
pub struct Mtools {
    bin_dir: Option<PathBuf>,
}

impl Mtools {
    /// mtools from `PATH`.
    pub fn from_path() -> Self {
        Self::default()
    }

    /// mtools programs from `dir` only.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { bin_dir: Some(dir.into()) }
    }

    fn command(&self, tool: &str) -> Command {
        let program = match &self.bin_dir {
            Some(dir) => dir.join(tool),
            None => PathBuf::from(tool),
        };
        let mut c = Command::new(program);
        // No interactive geometry checks on images; stable messages.
        c.env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C");
        c
    }

    /// Runs `tool args`, with `input` on stdin (else no stdin).
    fn run(&self, tool: &str, args: &[&str], input: Option<&[u8]>) -> Result<Output, PrepareError> {
        let mut cmd = self.command(tool);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => PrepareError::MtoolsMissing { tool: tool.to_string() },
            _ => PrepareError::Io { path: PathBuf::from(tool), source: e },
        })?;
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            // A broken pipe shows up as the tool's exit status below.
            if let Err(e) = stdin.write_all(data) {
                log::debug!("{tool}: writing stdin: {e}");
            }
        }
        child.wait_with_output().map_err(|e| PrepareError::Io { path: PathBuf::from(tool), source: e })
    }
}

/// Writes `file` as [`ENROLL_FILE_NAME`] onto the boot partition of `target`
/// (an image file or a whole-disk block device), using mtools from `PATH`.
/// Refuses to replace an existing enrollment file unless `overwrite`. See
/// the module documentation for how the CLI calls it.
pub fn prepare(target: &Path, file: &EnrollFile, overwrite: bool) -> Result<PreparedCard, PrepareError> {
    prepare_with(&Mtools::from_path(), target, file, overwrite)
}

/// [`prepare`] with mtools from a chosen place.
pub fn prepare_with(
    mtools: &Mtools,
    target: &Path,
    file: &EnrollFile,
    overwrite: bool,
) -> Result<PreparedCard, PrepareError> {
    // Everything that needs no disk access first.
    check_token(&file.token)?;
    if file.nats_urls.iter().all(|u| u.trim().is_empty()) {
        return Err(PrepareError::NoNatsUrls);
    }
    let text = toml::to_string(file)?;

    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PrepareError::TargetMissing(target.into())),
        Err(e) => return Err(io_error(target, e)),
    };
    let block_device = meta.file_type().is_block_device();
    if !block_device && !meta.is_file() {
        return Err(PrepareError::NotImageOrDevice(target.into()));
    }

    if block_device {
        check_sector_size(target)?;
    }
    let part = find_boot_partition(target)?;
    log::info!(
        "{}: boot partition {} (type 0x{:02x}) at offset {}, {} bytes",
        target.display(),
        part.number,
        part.kind,
        part.offset(),
        part.size()
    );

    check_not_mounted(target, block_device)?;

    let image = target.to_str().ok_or_else(|| PrepareError::UnusablePath(target.into()))?;
    if image.contains("@@") {
        // mtools would read it as the offset separator.
        return Err(PrepareError::UnusablePath(target.into()));
    }
    let spec = format!("{image}@@{}", part.offset());
    let dest = format!("::/{ENROLL_FILE_NAME}");

    let present = has_enroll_file(mtools, target, &spec)?;
    if present && !overwrite {
        return Err(PrepareError::AlreadyPresent { path: target.into(), partition: part.number });
    }

    // `-D s` (skip) rather than an interactive prompt should the file
    // appear between the check and the copy; the read-back then fails.
    let clash = if overwrite { "-o" } else { "-Ds" };
    let out = mtools.run("mcopy", &[clash, "-i", &spec, "-", &dest], Some(text.as_bytes()))?;
    check_status("mcopy", target, &out)?;

    let out = mtools.run("mtype", &["-i", &spec, &dest], None)?;
    check_status("mtype", target, &out)?;
    if out.stdout != text.as_bytes() {
        return Err(PrepareError::VerifyFailed {
            path: target.into(),
            partition: part.number,
            written: text.len(),
            read: out.stdout.len(),
        });
    }

    // mtools' writes may still sit in the page cache; a card pulled out
    // now would lose them.
    sync(target)?;

    log::info!("{}: {} {dest} ({} bytes)", target.display(), if present { "replaced" } else { "wrote" }, text.len());
    Ok(PreparedCard {
        target: target.into(),
        block_device,
        partition: part.number,
        partition_type: part.kind,
        offset: part.offset(),
        size: part.size(),
        path_written: dest,
        bytes: text.len(),
        replaced: present,
    })
}

/// Refuses a block device whose logical sectors are not 512 bytes (a 4Kn
/// USB drive): its MBR counts in 4096-byte sectors.
fn check_sector_size(target: &Path) -> Result<(), PrepareError> {
    let canon = std::fs::canonicalize(target).map_err(|e| io_error(target, e))?;
    let Some(name) = canon.file_name().and_then(|n| n.to_str()) else { return Ok(()) };
    let sysfs = format!("/sys/class/block/{name}/queue/logical_block_size");
    match std::fs::read_to_string(&sysfs).map(|s| s.trim().parse::<u64>()) {
        Ok(Ok(SECTOR)) => Ok(()),
        Ok(Ok(size)) => Err(PrepareError::SectorSize { path: target.into(), size }),
        other => {
            log::debug!("{sysfs}: {other:?}; assuming {SECTOR}-byte sectors");
            Ok(())
        }
    }
}

/// Whether `token` looks like an enrollment token (the shape
/// [`crate::enroll::token::parse`] accepts: `hfe1_<id>_<secret>`), so a
/// truncated paste is caught here rather than on first boot. Never echoes it.
pub fn check_token(token: &str) -> Result<(), PrepareError> {
    match crate::enroll::token::parse(token) {
        Some(_) => Ok(()),
        None => Err(PrepareError::BadToken),
    }
}

fn io_error(path: &Path, e: io::Error) -> PrepareError {
    match e.kind() {
        io::ErrorKind::PermissionDenied => PrepareError::PermissionDenied(path.into()),
        _ => PrepareError::Io { path: path.into(), source: e },
    }
}

fn check_status(tool: &str, target: &Path, out: &Output) -> Result<(), PrepareError> {
    if out.status.success() {
        return Ok(());
    }
    Err(PrepareError::Mtools {
        tool: tool.into(),
        path: target.into(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

fn has_enroll_file(mtools: &Mtools, target: &Path, spec: &str) -> Result<bool, PrepareError> {
    let out = mtools.run("mdir", &["-b", "-a", "-i", spec, "::/"], None)?;
    check_status("mdir", target, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_end().rsplit('/').next())
        .any(|name| name.eq_ignore_ascii_case(ENROLL_FILE_NAME)))
}

fn sync(target: &Path) -> Result<(), PrepareError> {
    let f = File::options().write(true).open(target).map_err(|e| io_error(target, e))?;
    f.sync_all().map_err(|e| io_error(target, e))
}

/// Reads the partition table of `target` and returns its boot partition.
pub fn find_boot_partition(target: &Path) -> Result<MbrPartition, PrepareError> {
    let mut f = File::open(target).map_err(|e| io_error(target, e))?;
    let mut head = [0u8; 2 * SECTOR as usize];
    let n = read_full(&mut f, &mut head).map_err(|e| io_error(target, e))?;
    let parts = parse_mbr(target, &head[..n])?;

    let mut seen = Vec::new();
    for p in &parts {
        if !FAT_PARTITION_TYPES.contains(&p.kind) {
            seen.push(format!("{}: type 0x{:02x}", p.number, p.kind));
            continue;
        }
        let mut boot = [0u8; SECTOR as usize];
        let ok = f
            .seek(SeekFrom::Start(p.offset()))
            .and_then(|_| read_full(&mut f, &mut boot))
            .map_err(|e| io_error(target, e))?
            == boot.len();
        if ok && is_fat_boot_sector(&boot) {
            return Ok(*p);
        }
        let why = if ok { "not formatted as FAT" } else { "beyond the end of the target" };
        log::warn!("{}: partition {} has FAT type 0x{:02x} but is {why}", target.display(), p.number, p.kind);
        seen.push(format!("{}: type 0x{:02x}, {why}", p.number, p.kind));
    }
    let detail = if seen.is_empty() {
        "the partition table is empty".to_string()
    } else {
        format!("primary partitions are [{}]; a boot partition has type 0x0c, 0x0b, 0x0e or 0x06", seen.join("; "))
    };
    Err(PrepareError::NoFatPartition { path: target.into(), detail })
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Parses the first sector (and, when present, the second, to recognise a
/// GPT header) into the used primary partitions.
pub fn parse_mbr(path: &Path, head: &[u8]) -> Result<Vec<MbrPartition>, PrepareError> {
    let no_table = |detail: &str| PrepareError::NoPartitionTable { path: path.into(), detail: detail.into() };
    if head.len() < SECTOR as usize {
        return Err(no_table("shorter than one sector"));
    }
    if head.len() >= 2 * SECTOR as usize && &head[512..520] == b"EFI PART" {
        return Err(PrepareError::Gpt(path.into()));
    }
    if head[510] != 0x55 || head[511] != 0xaa {
        return Err(no_table("no MBR signature in the first sector (is this a disk image?)"));
    }
    let bare_fat = || {
        no_table(
            "it starts with a FAT file system, not a partition table: pass the whole disk (/dev/sdX, \
             /dev/mmcblk0), not a partition",
        )
    };
    let entries: Vec<&[u8]> = (0..4).map(|i| &head[446 + 16 * i..446 + 16 * (i + 1)]).collect();
    // A status byte other than 0x00 / 0x80 means these 64 bytes are not a
    // partition table (a FAT boot sector keeps boot code there).
    if entries.iter().any(|e| e[0] & 0x7f != 0) {
        return Err(if is_fat_boot_sector(head) {
            bare_fat()
        } else {
            no_table("the first sector has an MBR signature but invalid partition entries")
        });
    }
    let mut parts = Vec::new();
    for (i, e) in (1u8..).zip(&entries) {
        let kind = e[4];
        if kind == 0xee {
            return Err(PrepareError::Gpt(path.into()));
        }
        let start_lba = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
        let sectors = u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]]));
        if kind != 0 && sectors != 0 {
            parts.push(MbrPartition { number: i, kind, start_lba, sectors });
        }
    }
    if parts.is_empty() && is_fat_boot_sector(head) {
        return Err(bare_fat());
    }
    Ok(parts)
}

/// Whether `sector` is a FAT12/16/32 boot sector.
pub fn is_fat_boot_sector(sector: &[u8]) -> bool {
    if sector.len() < SECTOR as usize || sector[510] != 0x55 || sector[511] != 0xaa {
        return false;
    }
    let jump = sector[0] == 0xeb || sector[0] == 0xe9;
    let bytes_per_sector = u16::from_le_bytes([sector[11], sector[12]]);
    let sectors_per_cluster = sector[13];
    let fat_name = &sector[54..57] == b"FAT" || &sector[82..85] == b"FAT";
    jump && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sectors_per_cluster.is_power_of_two()
        && sector[16] > 0 // number of FATs
        && fat_name
}

/// Refuses when `target`, one of its partitions, or (for an image) a loop
/// device backed by it is mounted.
fn check_not_mounted(target: &Path, block_device: bool) -> Result<(), PrepareError> {
    let canon = std::fs::canonicalize(target).map_err(|e| io_error(target, e))?;
    let mut names = Vec::new();
    if block_device {
        if let Some(n) = canon.file_name().and_then(|n| n.to_str()) {
            names.push(n.to_string());
        }
    } else {
        names.extend(loops_backed_by(&canon));
    }
    let mounts = match std::fs::read_to_string("/proc/mounts") {
        Ok(m) => m,
        Err(e) if block_device => {
            return Err(PrepareError::MountCheck { path: target.into(), detail: format!("/proc/mounts: {e}") })
        }
        Err(e) => {
            log::warn!("cannot read /proc/mounts ({e}); not checking whether {} is loop-mounted", target.display());
            return Ok(());
        }
    };
    let canon_source = |s: &str| {
        std::fs::canonicalize(s).ok().and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
    };
    match mounted_holder(&mounts, &names, canon_source) {
        Some((source_dev, mount_point)) => Err(PrepareError::Mounted { path: target.into(), source_dev, mount_point }),
        None => Ok(()),
    }
}

/// Names (`loop3`) of the loop devices whose backing file is `image`.
fn loops_backed_by(image: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim_end_matches('\n').trim_end_matches(" (deleted)");
            (Path::new(backing) == image).then_some(name)
        })
        .collect()
}

/// Whether kernel block device `candidate` is `disk` or one of its
/// partitions (`sdb` → `sdb1`; `mmcblk0` → `mmcblk0p1`; `loop1` → `loop1p2`
/// but not `loop10`).
pub fn is_disk_or_partition(disk: &str, candidate: &str) -> bool {
    let Some(rest) = candidate.strip_prefix(disk) else { return false };
    if rest.is_empty() {
        return true;
    }
    let digits = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        match rest.strip_prefix('p') {
            Some(d) => d,
            None => return false,
        }
    } else {
        rest
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Finds a line of `mounts` (the format of `/proc/mounts`) whose source is
/// one of the block devices `disks` or a partition of one. `canon` maps a
/// source path to its kernel name after resolving symlinks (`/dev/disk/
/// by-uuid/...` → `sdb1`), or `None`. Returns (source, mount point).
pub fn mounted_holder(
    mounts: &str,
    disks: &[String],
    canon: impl Fn(&str) -> Option<String>,
) -> Option<(String, String)> {
    if disks.is_empty() {
        return None;
    }
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(point)) = (fields.next(), fields.next()) else { continue };
        let source = unescape_mount_field(source);
        let plain = Path::new(&source).file_name().and_then(|n| n.to_str()).map(str::to_string);
        let resolved = canon(&source);
        let hit = source.starts_with("/dev/")
            && [plain, resolved].iter().flatten().any(|name| disks.iter().any(|d| is_disk_or_partition(d, name)));
        if hit {
            return Some((source, unescape_mount_field(point)));
        }
    }
    None
}

/// `/proc/mounts` escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names() {
        assert!(is_disk_or_partition("sdb", "sdb"));
        assert!(is_disk_or_partition("sdb", "sdb1"));
        assert!(is_disk_or_partition("sdb", "sdb12"));
        assert!(!is_disk_or_partition("sdb", "sdba1"));
        assert!(!is_disk_or_partition("sd", "sdb1"));
        assert!(is_disk_or_partition("mmcblk0", "mmcblk0p1"));
        assert!(!is_disk_or_partition("mmcblk0", "mmcblk01"));
        assert!(is_disk_or_partition("loop1", "loop1p2"));
        assert!(!is_disk_or_partition("loop1", "loop10"));
        assert!(!is_disk_or_partition("nvme0n1", "nvme0n1p"));
    }

    #[test]
    fn mounts_are_found_through_symlinks_and_escapes() {
        let mounts = "proc /proc proc rw 0 0\n\
                      /dev/nvme0n1p2 / ext4 rw 0 0\n\
                      /dev/disk/by-label/boot /media/me/my\\040boot vfat rw 0 0\n\
                      tmpfs /tmp tmpfs rw 0 0\n";
        let canon = |s: &str| (s == "/dev/disk/by-label/boot").then(|| "sdb1".to_string());
        assert_eq!(
            mounted_holder(mounts, &["sdb".into()], canon),
            Some(("/dev/disk/by-label/boot".into(), "/media/me/my boot".into()))
        );
        assert_eq!(mounted_holder(mounts, &["sdc".into()], canon), None);
        assert_eq!(mounted_holder(mounts, &["nvme0n1".into()], canon).map(|m| m.1), Some("/".into()));
        assert_eq!(mounted_holder(mounts, &["loop0".into()], canon), None);
        assert_eq!(mounted_holder(mounts, &[], canon), None);
    }

    #[test]
    fn tokens() {
        let good = format!("{TOKEN_PREFIX}0123456789ab_{}", "s".repeat(43));
        assert!(check_token(&good).is_ok());
        for bad in [
            "",
            TOKEN_PREFIX,
            "abc",
            &good.replace(TOKEN_PREFIX, "hfe2_"),
            &good[..good.len() - 1],
            &format!(" {good}"),
            &format!("{good} "),
        ] {
            assert!(matches!(check_token(bad), Err(PrepareError::BadToken)), "{bad:?}");
        }
        let msg = check_token(&good[..good.len() - 1]).unwrap_err().to_string();
        assert!(!msg.contains(&good[..good.len() - 1]), "{msg}");
    }

    #[test]
    fn mbr_parsing() {
        let p = Path::new("x.img");
        let mut head = vec![0u8; 1024];
        assert!(matches!(parse_mbr(p, &head), Err(PrepareError::NoPartitionTable { .. })));
        head[510] = 0x55;
        head[511] = 0xaa;
        assert_eq!(parse_mbr(p, &head).unwrap(), vec![]);
        let entry = |head: &mut Vec<u8>, i: usize, kind: u8, start: u32, size: u32| {
            let e = &mut head[446 + 16 * i..446 + 16 * (i + 1)];
            e[4] = kind;
            e[8..12].copy_from_slice(&start.to_le_bytes());
            e[12..16].copy_from_slice(&size.to_le_bytes());
        };
        entry(&mut head, 0, 0x0c, 8192, 131072);
        entry(&mut head, 2, 0x83, 139264, 1000);
        let parts = parse_mbr(p, &head).unwrap();
        assert_eq!(
            parts,
            vec![
                MbrPartition { number: 1, kind: 0x0c, start_lba: 8192, sectors: 131072 },
                MbrPartition { number: 3, kind: 0x83, start_lba: 139264, sectors: 1000 }
            ]
        );
        assert_eq!(parts[0].offset(), 4 << 20);
        let mut gpt = head.clone();
        entry(&mut gpt, 0, 0xee, 1, 100);
        assert!(matches!(parse_mbr(p, &gpt), Err(PrepareError::Gpt(_))));
        let mut gpt = head.clone();
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert!(matches!(parse_mbr(p, &gpt), Err(PrepareError::Gpt(_))));
    }
}
