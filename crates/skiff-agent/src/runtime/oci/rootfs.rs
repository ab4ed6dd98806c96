//! A container run's root filesystem: an overlayfs mount of its image's unpacked layers
//! under a writable upper directory of its own, or, where overlayfs cannot be mounted
//! (no module, or a data directory overlayfs cannot sit on), a copy of the layers made as
//! overlayfs would show them (whiteouts remove, opaque directories hide what is below).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;

use super::layers::remove_any;

/// Makes `rootfs` in `bundle` from `layers` (bottom first). Blocking.
pub fn make(bundle: &Path, rootfs: &Path, layers: &[PathBuf]) -> Result<(), String> {
    match mount_overlay(bundle, rootfs, layers) {
        Ok(()) => Ok(()),
        Err(why) => {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| tracing::warn!(%why, "container roots are copies of their layers here, which is slower to start and takes more disk"));
            copy_layers(layers, rootfs)
        }
    }
}

/// Removes a run's root: unmounts it (if it is a mount) and deletes the bundle. Blocking.
pub fn remove(bundle: &Path, rootfs: &Path) {
    let _ = rustix::mount::unmount(rootfs, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_dir_all(bundle);
}

fn mount_overlay(bundle: &Path, rootfs: &Path, layers: &[PathBuf]) -> Result<(), String> {
    let (upper, work, empty) = (bundle.join("upper"), bundle.join("work"), bundle.join("empty"));
    for d in [rootfs, &upper, &work, &empty] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    // overlayfs lists the top layer first; an image with no layers gets an empty one.
    let mut lower: Vec<String> = layers.iter().rev().map(|p| p.display().to_string()).collect();
    if lower.is_empty() {
        lower.push(empty.display().to_string());
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
    let options = std::ffi::CString::new(options).map_err(|e| e.to_string())?;
    rustix::mount::mount("overlay", rootfs, "overlay", rustix::mount::MountFlags::empty(), Some(options.as_c_str()))
        .map_err(|e| format!("mounting the container's root (overlayfs): {e}"))
}

/// The copy fallback: each layer merged onto `rootfs` in turn.
fn copy_layers(layers: &[PathBuf], rootfs: &Path) -> Result<(), String> {
    std::fs::create_dir_all(rootfs).map_err(|e| format!("creating {}: {e}", rootfs.display()))?;
    for layer in layers {
        merge(layer, rootfs).map_err(|e| format!("copying layer {} into the container's root: {e}", layer.display()))?;
    }
    Ok(())
}

fn merge(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&source)?;
        let kind = meta.file_type();
        if kind.is_char_device() && meta.rdev() == 0 {
            remove_any(&target); // a whiteout
            continue;
        }
        if kind.is_dir() {
            let opaque = rustix::fs::lgetxattr(&source, "trusted.overlay.opaque", &mut [0u8; 1]).is_ok_and(|n| n == 1);
            if opaque || !std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                remove_any(&target);
                std::fs::create_dir(&target)?;
            }
            merge(&source, &target)?;
        } else {
            remove_any(&target);
            if kind.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&source)?, &target)?;
            } else if kind.is_file() {
                std::fs::copy(&source, &target)?;
            } else {
                continue; // layers keep no other special files
            }
        }
        // Owner first: a chown clears set-user-ID bits, which the mode then restores.
        std::os::unix::fs::lchown(&target, Some(meta.uid()), Some(meta.gid()))?;
        if !kind.is_symlink() {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::oci::layers::unpack;

    fn layer(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_gnu();
            let dir = path.ends_with('/');
            header.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
            header.set_mode(if dir { 0o755 } else if path.ends_with(".sh") { 0o4755 } else { 0o644 });
            header.set_size(data.len() as u64);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            builder.append_data(&mut header, path, data.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// Every path under `root` with its content (or `/` for a directory) and mode.
    fn tree(root: &Path) -> Vec<(String, String, u32)> {
        let mut out = Vec::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let meta = std::fs::symlink_metadata(e.path()).unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                let content = if meta.is_dir() { dirs.push(e.path()); "/".into() } else { std::fs::read_to_string(e.path()).unwrap() };
                out.push((rel, content, meta.mode() & 0o7777));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_copied_root_is_what_overlayfs_shows() {
        if !rustix::process::geteuid().is_root() {
            return; // whiteouts are device nodes: only root unpacks them
        }
        let dir = tempfile::tempdir().unwrap();
        let (bottom, top) = (dir.path().join("l0"), dir.path().join("l1"));
        for l in [&bottom, &top] {
            std::fs::create_dir(l).unwrap();
        }
        unpack(&layer(&[("etc/", ""), ("etc/keep", "k"), ("etc/gone", "g"), ("app/", ""), ("app/old", "o"), ("run.sh", "v1")])[..], &bottom).unwrap();
        unpack(&layer(&[("etc/.wh.gone", ""), ("app/.wh..wh..opq", ""), ("app/new", "n"), ("run.sh", "v2")])[..], &top).unwrap();
        let layers = [bottom, top];
        let copied = dir.path().join("copy");
        copy_layers(&layers, &copied).unwrap();
        let want = vec![
            ("app".into(), "/".into(), 0o755), ("app/new".into(), "n".into(), 0o644),
            ("etc".into(), "/".into(), 0o755), ("etc/keep".into(), "k".into(), 0o644),
            ("run.sh".into(), "v2".into(), 0o4755),
        ];
        assert_eq!(tree(&copied), want);
        // Where overlayfs mounts, it shows the same tree.
        let bundle = dir.path().join("bundle");
        let rootfs = bundle.join("rootfs");
        if mount_overlay(&bundle, &rootfs, &layers).is_ok() {
            let shown = tree(&rootfs);
            remove(&bundle, &rootfs);
            assert_eq!(shown, want);
        }
    }
}
