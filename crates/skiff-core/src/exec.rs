//! The query of a `pods/exec` request (`?command=sh&command=-c&…&stdin=true`): read by the
//! API server, which checks it against the pod, and by the node agent, which runs it.

/// What an exec asks for. `command` repeats in the query, one word each, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub container: Option<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecOptions {
    /// Parses the query; an exec with no command word is an error, as in Kubernetes.
    pub fn parse(query: &str) -> Result<Self, String> {
        let o = Self::parse_attach(query)?;
        if o.command.is_empty() {
            return Err("you must specify at least one command for the container".into());
        }
        Ok(o)
    }

    /// Parses the query of a `pods/attach` request: the same streams, no command.
    pub fn parse_attach(query: &str) -> Result<Self, String> {
        let mut o = ExecOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8().map_err(|_| format!("{k} is not UTF-8"))?.into_owned();
            let flag = || matches!(v.as_str(), "true" | "1");
            match k {
                "command" => o.command.push(v),
                "container" => o.container = Some(v),
                "stdin" => o.stdin = flag(),
                "stdout" => o.stdout = flag(),
                "stderr" => o.stderr = flag(),
                "tty" => o.tty = flag(),
                _ => {}
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::ExecOptions;

    #[test]
    fn command_words_keep_their_order() {
        let o = ExecOptions::parse("command=wasi-hello&command=cat&command=%2Fconfig%2Fa+b&command=echo+a%26b&container=main&stdin=true&stdout=true&stderr=1&tty=false").unwrap();
        assert_eq!(o.command, ["wasi-hello", "cat", "/config/a b", "echo a&b"]);
        assert_eq!(o.container.as_deref(), Some("main"));
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        assert!(ExecOptions::parse("stdout=true").unwrap_err().contains("at least one command"));
        assert!(ExecOptions::parse_attach("stdout=true&container=c").unwrap().stdout);
        assert!(ExecOptions::parse("command=%FF").unwrap_err().contains("not UTF-8"));
    }
}
