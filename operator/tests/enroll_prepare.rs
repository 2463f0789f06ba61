//! `enroll prepare` (issue #14) against real disk images built without root:
//! an MBR written by sfdisk, a FAT file system by mkfs.vfat at the
//! partition's offset, the enrollment file written and read back by mtools.
//! mtools, dosfstools and fdisk come from `scripts/setup`; a missing tool
//! fails these tests, it does not skip them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use harmony_operator::enroll::prepare::{prepare, prepare_with, Mtools, PrepareError};
use harmony_protocol::enroll::{EnrollFile, ENROLL_FILE_NAME, TOKEN_PREFIX};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;

/// A tool from PATH or the sbin directories (not on a user's PATH on
/// Debian); panics, naming the package, when it is missing.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found: install the Debian package {package} (scripts/setup does)"))
}

fn require_mtools() {
    for t in ["mcopy", "mtype", "mdir"] {
        tool(t, "mtools");
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.stdout(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A sparse image of `size_mib` with the partition table `sfdisk_script`.
fn image(dir: &Path, name: &str, size_mib: u64, sfdisk_script: &str) -> PathBuf {
    let img = dir.join(name);
    std::fs::File::create(&img).unwrap().set_len(size_mib * MIB).unwrap();
    let mut child = Command::new(tool("sfdisk", "fdisk"))
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(sfdisk_script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sfdisk: {}", String::from_utf8_lossy(&out.stderr));
    img
}

/// mkfs.vfat `fat` (12, 16 or 32) on `size_mib` at `offset_mib` of `img`.
fn mkfs(img: &Path, fat: u32, offset_mib: u64, size_mib: u64) {
    run(Command::new(tool("mkfs.vfat", "dosfstools"))
        .args(["-F", &fat.to_string(), "-n", "BOOT", "--offset", &(offset_mib * MIB / 512).to_string()])
        // FAT32 needs 65525 clusters: 512-byte ones on these small sizes.
        .args(if fat == 32 { &["-s", "1"][..] } else { &[] })
        .arg(img)
        .arg((size_mib * 1024).to_string()));
}

/// A Raspberry-Pi-like card: FAT32 (LBA) boot partition at 4 MiB, a Linux
/// root partition after it.
fn pi_image(dir: &Path, name: &str) -> PathBuf {
    let img = image(dir, name, 48, "label: dos\nunit: sectors\nstart=8192, size=73728, type=c\nstart=81920, type=83\n");
    mkfs(&img, 32, 4, 36);
    // Something on the root partition, to prove it is left alone.
    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(40 * MIB + 4096)).unwrap();
    f.write_all(b"root partition data").unwrap();
    img
}

/// The image's bytes, to prove a refusal changed none (compared whole
/// rather than hashed: sha2 is unoptimised in test builds).
fn snapshot(path: &Path) -> Option<Vec<u8>> {
    path.is_file().then(|| std::fs::read(path).unwrap())
}

/// Everything outside `[start, end)`: the MBR and the other partitions.
fn outside(path: &Path, start: u64, end: u64) -> Vec<u8> {
    let mut b = std::fs::read(path).unwrap();
    b.drain(start as usize..end as usize);
    b
}

/// A token of the shape `enroll token create` prints, its secret made of
/// `tag` repeated.
fn token(tag: &str) -> String {
    let secret: String = tag.chars().cycle().take(43).collect();
    format!("{TOKEN_PREFIX}0123456789ab_{secret}")
}

fn enroll_file(tag: &str) -> EnrollFile {
    EnrollFile {
        token: token(tag),
        nats_urls: vec!["tls://nats-a.example:4222".into(), "tls://nats-b.example:4222".into()],
        nats_ca_pem: Some("-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n".into()),
    }
}

/// The file as the device will see it, read with mtools.
fn mtype(img: &Path, offset: u64) -> String {
    let out = Command::new(tool("mtype", "mtools"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{offset}", img.display()))
        .arg(format!("::/{ENROLL_FILE_NAME}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "mtype: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `prepare`, expects an error, and checks the image is unchanged.
fn refused(img: &Path, file: &EnrollFile, overwrite: bool) -> PrepareError {
    let before = snapshot(img);
    let err = prepare(img, file, overwrite).expect_err("prepare should refuse");
    assert!(snapshot(img) == before, "{err}: the image changed");
    let msg = err.to_string();
    if file.token.len() > TOKEN_PREFIX.len() {
        assert!(!msg.contains(&file.token), "error message leaks the token: {msg}");
    }
    err
}

#[test]
fn enroll_prepare_writes_verifies_and_refuses_to_overwrite() {
    require_mtools();
    let dir = tempfile::tempdir().unwrap();
    let img = pi_image(dir.path(), "card.wic");
    let rest = outside(&img, 4 * MIB, 40 * MIB);

    let first = enroll_file("first0secret");
    let card = prepare(&img, &first, false).unwrap();
    assert_eq!((card.partition, card.partition_type, card.offset, card.size), (1, 0x0c, 4 * MIB, 36 * MIB));
    assert!(!card.replaced && !card.block_device);
    assert_eq!(card.path_written, format!("::/{ENROLL_FILE_NAME}"));
    let text = mtype(&img, card.offset);
    assert_eq!(text, toml::to_string(&first).unwrap());
    assert_eq!(text.len(), card.bytes);
    assert_eq!(toml::from_str::<EnrollFile>(&text).unwrap(), first);
    for shown in [card.to_string(), format!("{card:?}")] {
        assert!(!shown.contains(&first.token), "{shown}");
    }
    // Only the FAT partition changed: the MBR and the root partition did not.
    assert!(outside(&img, 4 * MIB, 40 * MIB) == rest, "bytes outside the FAT partition changed");

    // A second prepare does not replace it without being told to.
    let second = enroll_file("second0secret");
    let err = refused(&img, &second, false);
    assert!(matches!(err, PrepareError::AlreadyPresent { partition: 1, .. }), "{err}");
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(mtype(&img, card.offset), text);

    let card = prepare(&img, &second, true).unwrap();
    assert!(card.replaced);
    assert_eq!(mtype(&img, card.offset), toml::to_string(&second).unwrap());
    assert!(outside(&img, 4 * MIB, 40 * MIB) == rest, "bytes outside the FAT partition changed");

    // Without the optional CA the file is shorter: no stale tail survives.
    let third = EnrollFile { nats_ca_pem: None, ..enroll_file("third0secret") };
    let card = prepare(&img, &third, true).unwrap();
    assert_eq!(mtype(&img, card.offset), toml::to_string(&third).unwrap());
}

#[test]
fn enroll_prepare_finds_a_fat16_partition_after_a_linux_one() {
    require_mtools();
    let dir = tempfile::tempdir().unwrap();
    let img = image(
        dir.path(),
        "fat16.img",
        48,
        "label: dos\nunit: sectors\nstart=2048, size=16384, type=83\nstart=20480, size=65536, type=e\n",
    );
    mkfs(&img, 16, 10, 32);
    let card = prepare(&img, &enroll_file("abc"), false).unwrap();
    assert_eq!((card.partition, card.partition_type, card.offset), (2, 0x0e, 10 * MIB));
    assert_eq!(mtype(&img, card.offset), toml::to_string(&enroll_file("abc")).unwrap());
}

#[test]
fn enroll_prepare_refuses_images_without_a_fat_partition() {
    require_mtools();
    let dir = tempfile::tempdir().unwrap();
    let file = enroll_file("tok");

    let linux_only = image(dir.path(), "linux.img", 16, "label: dos\nunit: sectors\nstart=2048, type=83\n");
    let err = refused(&linux_only, &file, false);
    assert!(matches!(err, PrepareError::NoFatPartition { .. }), "{err}");
    assert!(err.to_string().contains("0x83"), "{err}");

    // FAT type in the table, but never formatted.
    let unformatted = image(dir.path(), "unformatted.img", 16, "label: dos\nunit: sectors\nstart=2048, type=c\n");
    let err = refused(&unformatted, &file, true);
    assert!(matches!(err, PrepareError::NoFatPartition { .. }), "{err}");
    assert!(err.to_string().contains("not formatted"), "{err}");

    let gpt = image(
        dir.path(),
        "gpt.img",
        16,
        "label: gpt\nstart=2048, size=8192, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n",
    );
    let err = refused(&gpt, &file, false);
    assert!(matches!(err, PrepareError::Gpt(_)), "{err}");
    assert!(err.to_string().contains("GPT"), "{err}");

    let blank = dir.path().join("blank.img");
    std::fs::write(&blank, vec![0u8; MIB as usize]).unwrap();
    let err = refused(&blank, &file, false);
    assert!(matches!(err, PrepareError::NoPartitionTable { .. }), "{err}");

    // A bare FAT file system (someone passed /dev/sdb1 instead of /dev/sdb).
    let bare = dir.path().join("bare.img");
    std::fs::File::create(&bare).unwrap().set_len(16 * MIB).unwrap();
    mkfs(&bare, 16, 0, 16);
    let err = refused(&bare, &file, false);
    assert!(matches!(err, PrepareError::NoPartitionTable { .. }), "{err}");
    assert!(err.to_string().contains("whole disk"), "{err}");

    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let err = refused(&empty, &file, false);
    assert!(matches!(err, PrepareError::NoPartitionTable { .. }), "{err}");
}

#[test]
fn enroll_prepare_refuses_bad_targets_and_bad_files() {
    require_mtools();
    let dir = tempfile::tempdir().unwrap();
    let img = pi_image(dir.path(), "card.img");

    let missing = dir.path().join("no-such.wic");
    let err = refused(&missing, &enroll_file("tok"), false);
    assert!(matches!(err, PrepareError::TargetMissing(_)), "{err}");
    assert!(err.to_string().contains("no-such.wic"), "{err}");
    assert!(!missing.exists());

    let err = refused(dir.path(), &enroll_file("tok"), false);
    assert!(matches!(err, PrepareError::NotImageOrDevice(_)), "{err}");

    let good = token("x");
    let truncated = &good[..good.len() - 1];
    let spaced = good.replacen('x', " ", 1);
    let upper = good.to_uppercase();
    for token in ["not-a-token-secret", "hfe1_", "", &spaced, &upper, truncated] {
        let file = EnrollFile { token: token.into(), ..enroll_file("x") };
        let err = refused(&img, &file, true);
        assert!(matches!(err, PrepareError::BadToken), "{token:?}: {err}");
        assert!(err.to_string().contains(TOKEN_PREFIX), "{err}");
    }

    let file = EnrollFile { nats_urls: vec![], ..enroll_file("tok") };
    let err = refused(&img, &file, false);
    assert!(matches!(err, PrepareError::NoNatsUrls), "{err}");
}

#[test]
fn enroll_prepare_says_to_install_mtools_when_it_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let img = pi_image(dir.path(), "card.img");
    let before = snapshot(&img);
    let no_tools = dir.path().join("empty-bin");
    std::fs::create_dir(&no_tools).unwrap();
    let err = prepare_with(&Mtools::in_dir(&no_tools), &img, &enroll_file("tok"), false).unwrap_err();
    assert!(matches!(err, PrepareError::MtoolsMissing { .. }), "{err}");
    assert!(err.to_string().contains("apt-get install mtools"), "{err}");
    assert!(snapshot(&img) == before, "the image changed");
}

/// The layout of meta-harmony/files/wic/harmony-*.wks: two raw U-Boot
/// environment copies at 1024K and 1088K outside any partition, an active
/// FAT boot partition at 4 MiB, a gap, rootfs A and B and data (smaller
/// here). The environment copies must survive byte for byte.
#[test]
fn enroll_prepare_on_the_layers_card_layout() {
    require_mtools();
    let dir = tempfile::tempdir().unwrap();
    let img = image(
        dir.path(),
        "harmony-image-qemuarm64.wic",
        224,
        "label: dos\nunit: sectors\n\
         start=8192, size=131072, type=c, bootable\n\
         start=270336, size=65536, type=83\n\
         start=335872, size=65536, type=83\n\
         start=401408, type=83\n",
    );
    mkfs(&img, 16, 4, 64);
    let env = b"harmony boot env ";
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        for at in [1024 * 1024, 1088 * 1024] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(env).unwrap();
        }
    }
    let rest = outside(&img, 4 * MIB, 68 * MIB);
    let file = enroll_file("layer0layout");
    let card = prepare(&img, &file, false).unwrap();
    assert_eq!((card.partition, card.partition_type, card.offset, card.size), (1, 0x0c, 4 * MIB, 64 * MIB));
    assert_eq!(mtype(&img, card.offset), toml::to_string(&file).unwrap());
    assert!(outside(&img, 4 * MIB, 68 * MIB) == rest, "bytes outside the boot partition changed");
}
