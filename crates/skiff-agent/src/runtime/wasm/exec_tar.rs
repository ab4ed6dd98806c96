//! `tar` for exec, which `kubectl cp` runs in the container: `tar cf - PATH` to copy out
//! of it, `tar -xmf - -C DIR` to copy into it. A Wasm image has no tar, so the agent
//! answers these forms itself, over the container's volumes (the only files a Wasm pod
//! has): read-only mounts stay read-only, no path leaves its volume, symlinks are
//! archived as links and never followed, and only files and directories are unpacked.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::runtime::{Exit, Mount};

/// The tar invocations served.
#[derive(Debug, PartialEq, Eq)]
pub enum Tar {
    /// Write an archive of `path` to stdout.
    Create { path: String },
    /// Unpack the archive on stdin into `dir`.
    Extract { dir: String },
}

/// The tar invocation `argv` asks for; `None` when it is not tar, an error for a form
/// not served.
pub fn parse(argv: &[String]) -> Option<Result<Tar, String>> {
    if argv.first().map(String::as_str) != Some("tar") {
        return None;
    }
    Some(parse_args(&argv[1..]))
}

fn parse_args(args: &[String]) -> Result<Tar, String> {
    let (mut create, mut extract, mut dir, mut paths) = (false, false, None, Vec::new());
    let mut words = args.iter();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--no-same-permissions" | "--no-same-owner" => {}
            "-C" => dir = Some(words.next().ok_or("tar: -C needs a directory")?.clone()),
            w if w.starts_with("--") => return Err(format!("tar: option {w} is not supported here")),
            w if (w.starts_with('-') && w.len() > 1) || (paths.is_empty() && !create && !extract && w.chars().all(|c| c.is_ascii_alphabetic())) => {
                for flag in w.trim_start_matches('-').chars() {
                    match flag {
                        'c' => create = true,
                        'x' => extract = true,
                        // Modification times and verbosity are not kept or reported.
                        'm' | 'v' => {}
                        'f' => {
                            if words.next().map(String::as_str) != Some("-") {
                                return Err("tar: only the archive on standard input or output (f -) is supported here".into());
                            }
                        }
                        other => return Err(format!("tar: option -{other} is not supported here")),
                    }
                }
            }
            path => paths.push(path.to_string()),
        }
    }
    match (create, extract, paths.as_slice()) {
        (true, false, [path]) => Ok(Tar::Create { path: match &dir { Some(d) => format!("{d}/{path}"), None => path.clone() } }),
        (false, true, []) => Ok(Tar::Extract { dir: dir.unwrap_or_else(|| "/".into()) }),
        _ => Err("tar: the forms served are `tar cf - PATH` and `tar xf - [-C DIR]` (what kubectl cp runs)".into()),
    }
}

/// Runs `tar` (as parsed) over the container's `mounts`; errors go to `stderr` as tar
/// reports them.
pub fn run(tar: Result<Tar, String>, mounts: &[Mount], stdin: impl Read, stdout: impl Write, mut stderr: impl Write) -> Exit {
    let result = match tar {
        Ok(Tar::Create { path }) => create(mounts, &path, stdout),
        Ok(Tar::Extract { dir }) => extract(mounts, &dir, stdin),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Exit { code: 0, reason: "Completed", message: None },
        Err(e) => {
            let _ = writeln!(stderr, "{e}");
            Exit { code: 2, reason: "Error", message: None }
        }
    }
}

/// The host path behind a guest path, and whether its volume is read-only.
fn resolve(mounts: &[Mount], guest: &str) -> Result<(PathBuf, bool), String> {
    let mut parts = Vec::new();
    for c in Path::new(guest).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_os_string()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    let clean: PathBuf = std::iter::once(std::ffi::OsString::from("/")).chain(parts).collect();
    let mount = mounts
        .iter()
        .filter(|m| clean.starts_with(&m.guest_path))
        .max_by_key(|m| m.guest_path.len())
        .ok_or_else(|| format!("tar: {guest}: Cannot open: No such file or directory (a Wasm pod's files are its volumes)"))?;
    let rest = clean.strip_prefix(&mount.guest_path).unwrap_or(Path::new(""));
    let host = mount.host_path.join(rest);
    // A symlink inside the volume must not lead out of it.
    let root = mount.host_path.canonicalize().map_err(|e| format!("tar: {guest}: {e}"))?;
    if let Ok(real) = host.canonicalize()
        && !real.starts_with(&root)
    {
        return Err(format!("tar: {guest}: Cannot open: it leads out of its volume"));
    }
    Ok((host, mount.read_only))
}

fn create(mounts: &[Mount], path: &str, out: impl Write) -> Result<(), String> {
    let (host, _) = resolve(mounts, path)?;
    let meta = std::fs::symlink_metadata(&host).map_err(|_| format!("tar: {path}: Cannot stat: No such file or directory"))?;
    let name = path.trim_start_matches('/');
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let added = if meta.is_dir() { builder.append_dir_all(name, &host) } else { builder.append_path_with_name(&host, name) };
    added.and_then(|()| builder.finish()).map_err(|e| format!("tar: {path}: {e}"))
}

fn extract(mounts: &[Mount], dir: &str, input: impl Read) -> Result<(), String> {
    let (host, read_only) = resolve(mounts, dir)?;
    if read_only {
        return Err(format!("tar: {dir}: Cannot open: Read-only file system"));
    }
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(|e| format!("tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("tar: {e}"))?;
        let name = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            other => return Err(format!("tar: {name}: {other:?} entries are not unpacked here (files and directories only)")),
        }
        // unpack_in refuses paths that leave `host`, through `..` or symlinks.
        match entry.unpack_in(&host) {
            Ok(true) => {}
            Ok(false) => return Err(format!("tar: {name}: refused: it leads out of {dir}")),
            Err(e) => return Err(format!("tar: {name}: Cannot open: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn kubectl_cps_forms_parse() {
        assert_eq!(parse(&words("tar cf - /config/a")), Some(Ok(Tar::Create { path: "/config/a".into() })));
        assert_eq!(parse(&words("tar --no-same-permissions --no-same-owner -xmf - -C /data")), Some(Ok(Tar::Extract { dir: "/data".into() })));
        assert_eq!(parse(&words("tar -xmf -")), Some(Ok(Tar::Extract { dir: "/".into() })));
        assert!(parse(&words("tar czf /tmp/x /a")).unwrap().is_err());
        assert!(parse(&words("wasi-hello tar")).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_words_parse_without_panicking(words in proptest::collection::vec("(-?[cxmfvC]{0,3}|--[a-z-]{0,8}|/[a-z/.]{0,6}|-)", 0..6)) {
            let mut argv = vec!["tar".to_string()];
            argv.extend(words);
            let _ = parse(&argv);
        }

        #[test]
        fn resolved_paths_stay_inside_their_volume(path in "(/|\\.\\.|[a-c]|/\\.\\./){0,8}") {
            let dir = tempfile::tempdir().unwrap();
            let mounts = vec![Mount { host_path: dir.path().to_path_buf(), guest_path: "/data".into(), read_only: false }];
            if let Ok((host, _)) = resolve(&mounts, &format!("/data/{path}")) {
                proptest::prop_assert!(host.starts_with(dir.path()), "{} escaped", host.display());
            }
        }
    }

    #[test]
    fn copies_out_and_in_within_volumes_only() {
        let dir = tempfile::tempdir().unwrap();
        let (data, config) = (dir.path().join("data"), dir.path().join("config"));
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(data.join("sub/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), data.join("link")).unwrap();
        let mounts = vec![
            Mount { host_path: data.clone(), guest_path: "/data".into(), read_only: false },
            Mount { host_path: config.clone(), guest_path: "/config".into(), read_only: true },
        ];
        let mut archive = Vec::new();
        assert_eq!(run(Ok(Tar::Create { path: "/data".into() }), &mounts, std::io::empty(), &mut archive, std::io::sink()).code, 0);
        let mut names: Vec<String> = tar::Archive::new(archive.as_slice()).entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        names.sort();
        assert!(names.contains(&"data/sub/a.txt".to_string()) && names.contains(&"data/link".to_string()), "{names:?}");
        // Out through a symlink, or above the root: refused.
        let mut err = Vec::new();
        assert_eq!(run(Ok(Tar::Create { path: "/data/link".into() }), &mounts, std::io::empty(), std::io::sink(), &mut err).code, 2);
        assert!(String::from_utf8_lossy(&err).contains("out of its volume"));
        assert!(resolve(&mounts, "/data/../../etc").is_err());
        // In: unpacked where asked; a read-only volume refuses.
        let mut upload = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        upload.append_data(&mut header, "b.txt", &b"hi"[..]).unwrap();
        let upload = upload.into_inner().unwrap();
        assert_eq!(run(Ok(Tar::Extract { dir: "/data/sub".into() }), &mounts, upload.as_slice(), std::io::sink(), std::io::sink()).code, 0);
        assert_eq!(std::fs::read_to_string(data.join("sub/b.txt")).unwrap(), "hi");
        let mut err = Vec::new();
        assert_eq!(run(Ok(Tar::Extract { dir: "/config".into() }), &mounts, upload.as_slice(), std::io::sink(), &mut err).code, 2);
        assert!(String::from_utf8_lossy(&err).contains("Read-only"));
    }
}
