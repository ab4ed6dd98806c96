//! Container image layers, unpacked once per digest into a store shared by every image
//! and pod of the node, each layer in its own directory in overlayfs's form: a deleted
//! path (`.wh.NAME`) becomes a whiteout (a 0:0 character device) and an opaque directory
//! (`.wh..wh..opq`) carries `trusted.overlay.opaque`, so a container's root is an overlay
//! mount of its image's layer directories.
//!
//! A layer is untrusted input: no entry lands outside its directory (`..` is refused, and
//! a symlink met on the way to an entry, absolute or not, is resolved inside the
//! directory), and device nodes and FIFOs are skipped rather than created.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How a layer blob is compressed, by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// `None` for a media type that is not a layer this node can unpack.
    pub fn of(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd" | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    fn reader<'a>(self, blob: impl Read + 'a) -> Result<Box<dyn Read + 'a>, String> {
        Ok(match self {
            Compression::None => Box::new(blob),
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(blob)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob).map_err(|e| format!("reading zstd: {e}"))?),
        })
    }
}

/// The node's unpacked layers: `DIR/<hex of the blob digest>/`.
pub struct LayerStore {
    dir: PathBuf,
    /// A turn per digest being unpacked: pods waiting for one layer share one unpack.
    unpacking: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl LayerStore {
    pub fn open(dir: PathBuf) -> std::io::Result<LayerStore> {
        std::fs::create_dir_all(&dir)?;
        // Unpacks a crash interrupted.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().contains(".partial") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(LayerStore { dir, unpacking: Mutex::new(HashMap::new()) })
    }

    /// The directory of a layer by its blob's digest.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest.trim_start_matches("sha256:"))
    }

    /// Unpacks the layer blob at `blob` unless it is unpacked already; returns its
    /// directory. Blocking: call it from `spawn_blocking`.
    pub fn ensure(&self, digest: &str, compression: Compression, blob: &Path) -> Result<PathBuf, String> {
        self.unpack_once(digest, compression, || std::fs::File::open(blob).map_err(|e| format!("opening layer {digest}: {e}")))
    }

    /// Unpacks a layer from its blob as it downloads, unless it is unpacked already. The
    /// layer is in place only once the blob has been read to its end, where a download
    /// that failed its digest check makes the read fail. Blocking.
    pub fn ensure_from(&self, digest: &str, compression: Compression, blob: impl Read) -> Result<PathBuf, String> {
        let mut blob = Some(blob);
        self.unpack_once(digest, compression, || blob.take().ok_or_else(|| "the blob was read already".to_string()))
    }

    fn unpack_once<R: Read>(&self, digest: &str, compression: Compression, open: impl FnOnce() -> Result<R, String>) -> Result<PathBuf, String> {
        let path = self.path(digest);
        if path.is_dir() {
            return Ok(path);
        }
        let turn = self.unpacking.lock().unwrap().entry(digest.to_string()).or_default().clone();
        let _turn = turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if path.is_dir() {
            return Ok(path);
        }
        // Unpacked aside and renamed, so a layer directory is always whole.
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).map_err(|e| format!("creating {}: {e}", partial.display()))?;
        let result = open()
            .map(|blob| std::io::BufReader::with_capacity(256 << 10, blob))
            .and_then(|mut blob| {
                let reader = compression.reader(&mut blob)?;
                unpack(reader, &partial).map_err(|e| format!("layer {digest}: {e}"))?;
                // The tar ends before the blob does (padding, the compressor's trailer):
                // the rest is read too, so a blob that fails its digest check is never used.
                std::io::copy(&mut blob, &mut std::io::sink()).map_err(|e| format!("layer {digest}: {e}"))
            })
            .and_then(|_| std::fs::rename(&partial, &path).map_err(|e| e.to_string()));
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        self.unpacking.lock().unwrap().remove(digest);
        result.map(|_| path)
    }

    /// Removes the layers not in `keep` (by digest); returns how many went.
    pub fn remove_unused(&self, keep: &std::collections::HashSet<String>) -> usize {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.contains('.') && !keep.contains(&format!("sha256:{name}")) && std::fs::remove_dir_all(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// What a layer held that was not unpacked.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Device nodes and FIFOs: a container gets its devices from the runtime.
    pub special_files: usize,
}

/// Unpacks a layer's tar stream into `root` in overlayfs's form.
pub fn unpack(reader: impl Read, root: &Path) -> Result<Skipped, String> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    let mut skipped = Skipped::default();
    for entry in archive.entries().map_err(|e| format!("reading the tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("reading the tar: {e}"))?;
        let raw = entry.path().map_err(|e| format!("an entry's name: {e}"))?.to_path_buf();
        let Some(relative) = contained(&raw)? else { continue };
        let name = relative.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let parent = inside(root, relative.parent().unwrap_or(Path::new("")), true)?;
        if name == ".wh..wh..opq" {
            xattr_set(&parent, "trusted.overlay.opaque", b"y")?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = parent.join(hidden);
            remove_any(&target);
            rustix::fs::mknodat(rustix::fs::CWD, &target, rustix::fs::FileType::CharacterDevice, rustix::fs::Mode::empty(), 0)
                .map_err(|e| format!("whiteout {}: {e}", target.display()))?;
            continue;
        }
        let dest = parent.join(&name);
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                    remove_any(&dest);
                }
                if !dest.exists() {
                    std::fs::create_dir(&dest).map_err(|e| format!("{}: {e}", raw.display()))?;
                }
                entry.unpack(&dest).map_err(|e| format!("{}: {e}", raw.display()))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Symlink => {
                remove_any(&dest);
                entry.unpack(&dest).map_err(|e| format!("{}: {e}", raw.display()))?;
            }
            tar::EntryType::Link => {
                let link = entry.link_name().map_err(|e| format!("{}: {e}", raw.display()))?.ok_or_else(|| format!("{}: a hard link without a target", raw.display()))?;
                let target_relative = contained(&link)?.ok_or_else(|| format!("{}: a hard link to the root", raw.display()))?;
                let target = inside(root, &target_relative, false)?;
                remove_any(&dest);
                std::fs::hard_link(&target, &dest).map_err(|e| format!("{} (a hard link to {}): {e}", raw.display(), link.display()))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => skipped.special_files += 1,
            // Metadata entries (PAX, GNU long names) are read by the tar crate itself.
            _ => {}
        }
    }
    Ok(skipped)
}

/// The entry's path relative to the layer root: `None` for the root itself, an error
/// for a path that climbs out of it.
fn contained(path: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(format!("the entry {:?} climbs out of the image's root", path.display().to_string())),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Where `relative` lies under `root`, every symlink on the way resolved inside `root`
/// (an absolute target is taken from `root`, and `..` stops at it). With `create`,
/// missing directories are made.
fn inside(root: &Path, relative: &Path, create: bool) -> Result<PathBuf, String> {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = relative.components().rev().map(|c| c.as_os_str().to_os_string()).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match Path::new(&part).components().next() {
            Some(Component::ParentDir) => {
                resolved.pop();
                continue;
            }
            Some(Component::Normal(_)) => {}
            _ => continue,
        }
        let here = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("too many symlinks resolving {}", relative.display()));
                }
                let target = std::fs::read_link(&here).map_err(|e| e.to_string())?;
                if target.is_absolute() {
                    resolved.clear();
                }
                pending.extend(target.components().rev().map(|c| c.as_os_str().to_os_string()));
            }
            Ok(m) if m.is_dir() || pending.is_empty() => resolved.push(part),
            Ok(_) => return Err(format!("{} is not a directory", here.display())),
            Err(_) if create => {
                std::fs::create_dir(&here).map_err(|e| format!("creating {}: {e}", here.display()))?;
                resolved.push(part);
            }
            Err(_) => resolved.push(part),
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

pub(super) fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).map_err(|e| format!("marking {} opaque: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_mode(if *kind == tar::EntryType::Directory { 0o755 } else { 0o644 });
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    header.set_size(0);
                    builder.append_link(&mut header, path, data).unwrap();
                }
                _ => {
                    header.set_size(data.len() as u64);
                    // The path is set raw, so tests can write what a hostile archive would.
                    let name = path.as_bytes();
                    header.as_old_mut().name[..name.len()].copy_from_slice(name);
                    header.set_cksum();
                    builder.append(&header, data.as_bytes()).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    use tar::EntryType::{Block, Directory, Link, Regular, Symlink};

    #[test]
    fn files_links_and_whiteouts_unpack_in_overlay_form() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = layer(&[
            ("etc/", Directory, ""),
            ("etc/motd", Regular, "hi\n"),
            ("etc/issue", Link, "etc/motd"),
            ("bin", Symlink, "usr/bin"),
            ("old/.wh.gone", Regular, ""),
            ("opaque/.wh..wh..opq", Regular, ""),
            ("dev/null", Block, ""),
        ]);
        let skipped = unpack(&bytes[..], dir.path()).unwrap();
        assert_eq!(skipped.special_files, 1);
        assert_eq!(std::fs::read_to_string(dir.path().join("etc/issue")).unwrap(), "hi\n");
        assert_eq!(std::fs::read_link(dir.path().join("bin")).unwrap(), Path::new("usr/bin"));
        let whiteout = std::fs::symlink_metadata(dir.path().join("old/gone")).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
        assert!(!dir.path().join("dev/null").exists());
    }

    #[test]
    fn an_entry_climbing_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let err = unpack(&layer(&[("../evil", Regular, "x")])[..], &root).unwrap_err();
        assert!(err.contains("climbs out"), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn writing_through_a_symlink_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let bytes = layer(&[
            ("abs", Symlink, outside.to_str().unwrap()),
            ("abs/file", Regular, "x"),
            ("up", Symlink, "../../../.."),
            ("up/file2", Regular, "y"),
        ]);
        unpack(&bytes[..], &root).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written outside");
        assert!(root.join(outside.strip_prefix("/").unwrap()).join("file").exists());
        assert!(root.join("file2").exists());
    }

    #[test]
    fn a_hard_link_out_of_the_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack(&layer(&[("x", Link, "../../etc/passwd")])[..], dir.path()).unwrap_err().contains("climbs out"));
    }

    proptest::proptest! {
        /// Whatever a layer's entries are named and wherever its symlinks point, nothing
        /// is written outside the layer's directory.
        #[test]
        fn no_layer_writes_outside_its_root(entries in proptest::collection::vec((
            proptest::collection::vec(proptest::sample::select(vec!["a", "b", "..", ".", "/", "l", ".wh.a", ".wh..wh..opq"]), 1..5),
            proptest::sample::select(vec![Regular, Directory, Symlink, Link]),
            proptest::sample::select(vec!["/", "..", "../..", "a", "/out", "l/..", "a/b"]),
        ), 1..8)) {
            let dir = tempfile::tempdir().unwrap();
            let (root, outside) = (dir.path().join("root"), dir.path().join("out"));
            // Absolute link names longer than the old header's 100 bytes would not fit.
            proptest::prop_assume!(outside.to_str().unwrap().len() < 100);
            std::fs::create_dir_all(&root).unwrap();
            std::fs::create_dir_all(&outside).unwrap();
            let mut builder = tar::Builder::new(Vec::new());
            for (parts, kind, target) in &entries {
                let name = parts.join("/");
                if name.is_empty() || name.len() > 90 {
                    continue;
                }
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(*kind);
                header.set_uid(0);
                header.set_gid(0);
                header.set_mtime(0);
                header.set_mode(0o755);
                header.set_size(if *kind == Regular { 1 } else { 0 });
                if matches!(kind, Symlink | Link) {
                    // "/out" stands for the real directory beside the root, by its absolute path.
                    let target = if *target == "/out" { outside.to_str().unwrap() } else { target };
                    header.set_link_name_literal(target).unwrap();
                }
                header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                header.set_cksum();
                builder.append(&header, if *kind == Regular { &b"x"[..] } else { &b""[..] }).unwrap();
            }
            let _ = unpack(&builder.into_inner().unwrap()[..], &root);
            let escaped: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).filter(|n| n != "root" && n != "out").collect();
            proptest::prop_assert!(escaped.is_empty(), "{escaped:?}");
            proptest::prop_assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        }
    }

    /// A whole tar, then the failed digest check the download reports at its end.
    struct FailsAtTheEnd(std::io::Cursor<Vec<u8>>);

    impl Read for FailsAtTheEnd {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other("digest mismatch")),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn a_layer_unpacked_as_it_downloads_is_kept_only_if_the_blob_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path().join("layers")).unwrap();
        let bytes = layer(&[("etc/motd", Regular, "hi\n")]);
        let err = store.ensure_from("sha256:bad", Compression::None, FailsAtTheEnd(std::io::Cursor::new(bytes.clone()))).unwrap_err();
        assert!(err.contains("digest mismatch"), "{err}");
        assert!(!store.path("sha256:bad").exists());
        let good = store.ensure_from("sha256:good", Compression::None, &bytes[..]).unwrap();
        assert_eq!(std::fs::read_to_string(good.join("etc/motd")).unwrap(), "hi\n");
        // Once there, it is not unpacked again.
        assert_eq!(store.ensure("sha256:good", Compression::None, Path::new("/nonexistent")).unwrap(), good);
    }

    #[test]
    fn media_types_say_the_compression() {
        assert_eq!(Compression::of("application/vnd.oci.image.layer.v1.tar+gzip"), Some(Compression::Gzip));
        assert_eq!(Compression::of("application/vnd.docker.image.rootfs.diff.tar.gzip"), Some(Compression::Gzip));
        assert_eq!(Compression::of("application/vnd.oci.image.layer.v1.tar+zstd"), Some(Compression::Zstd));
        assert_eq!(Compression::of("application/wasm"), None);
    }
}
