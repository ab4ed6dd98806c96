//! What a container image's config says about running it (OCI image spec, "config"):
//! entrypoint, command, environment, working directory, user; and the platform it was
//! built for.

use oci_spec::image::ImageConfiguration;

/// This node's platform as image configs name it (Go's `GOARCH`).
pub fn node_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The parts of an image config that running a container needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// `user[:group]`, by name or number.
    pub user: Option<String>,
}

fn parse(config: &[u8]) -> Result<ImageConfiguration, String> {
    serde_json::from_slice(config).map_err(|e| format!("the image config is not valid: {e}"))
}

/// Refuses an image built for another OS or architecture, saying which.
pub fn check_platform(config: &[u8]) -> Result<(), String> {
    let config = parse(config)?;
    let (os, arch) = (config.os().to_string(), config.architecture().to_string());
    if os != "linux" || arch != node_architecture() {
        return Err(format!("the image is for {os}/{arch}, and this node is linux/{}", node_architecture()));
    }
    Ok(())
}

/// The run defaults an image config gives.
pub fn defaults(config: &[u8]) -> Result<ImageDefaults, String> {
    let config = parse(config)?;
    let Some(c) = config.config() else { return Ok(ImageDefaults::default()) };
    let env = c.env().iter().flatten().map(|kv| match kv.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (kv.clone(), String::new()),
    });
    Ok(ImageDefaults {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: env.collect(),
        working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        user: c.user().clone().filter(|u| !u.is_empty()),
    })
}

/// The process's argv as Kubernetes builds it from the container and the image: the
/// container's `command` replaces the entrypoint (and then the image's `Cmd` is dropped),
/// its `args` replace `Cmd`.
pub fn argv(image: &ImageDefaults, command: &[String], args: &[String]) -> Vec<String> {
    let entry = if command.is_empty() { &image.entrypoint } else { command };
    let rest = if !args.is_empty() {
        args
    } else if command.is_empty() {
        &image.cmd
    } else {
        &[][..]
    };
    entry.iter().chain(rest).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn argv_follows_kubernetes_rules() {
        let image = ImageDefaults { entrypoint: v(&["/ep"]), cmd: v(&["c1"]), ..Default::default() };
        assert_eq!(argv(&image, &[], &[]), v(&["/ep", "c1"]));
        assert_eq!(argv(&image, &[], &v(&["a"])), v(&["/ep", "a"]));
        assert_eq!(argv(&image, &v(&["/x"]), &[]), v(&["/x"]));
        assert_eq!(argv(&image, &v(&["/x"]), &v(&["a"])), v(&["/x", "a"]));
    }

    #[test]
    fn another_platform_is_refused_by_name() {
        let other = if node_architecture() == "arm64" { "amd64" } else { "arm64" };
        let config = format!(r#"{{"architecture":"{other}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#);
        assert!(check_platform(config.as_bytes()).unwrap_err().contains(&format!("linux/{other}")));
        let here = format!(r#"{{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"config":{{"Env":["PATH=/bin"],"Cmd":["sh"]}}}}"#, node_architecture());
        check_platform(here.as_bytes()).unwrap();
        let d = defaults(here.as_bytes()).unwrap();
        assert_eq!((d.env, d.cmd), (vec![("PATH".into(), "/bin".into())], v(&["sh"])));
    }
}
