//! What a bench found, as headline rows: what was measured, Skiff's figure, the reference
//! (measured in the same run, or a published anchor, named) and the ratio between them.
//! Each bench prints its detailed table as it runs; the rows go to `--json FILE`, and
//! `--markdown` prints them as the README's performance table. `skiff-bench table
//! FILE…` joins the JSON of several runs into one such table.

use std::time::Duration;

use serde_json::{Value, json};

/// One headline figure.
pub struct Row {
    pub what: String,
    pub skiff: String,
    pub reference: String,
    /// Skiff's figure over the reference's, oriented so that above 1 is Skiff ahead.
    pub ratio: Option<f64>,
}

impl Row {
    pub fn new(what: impl Into<String>, skiff: impl Into<String>, reference: impl Into<String>, ratio: Option<f64>) -> Row {
        Row { what: what.into(), skiff: skiff.into(), reference: reference.into(), ratio }
    }
}

/// The machine a run was on, since absolute figures mean little without it.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = skiff_agent::node::proc_bytes("/proc/meminfo", "MemTotal:").unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {:.0} GiB, Linux {}", memory as f64 / (1u64 << 30) as f64, kernel.trim())
}

pub fn to_json(bench: &str, quick: bool, rows: &[Row]) -> Value {
    json!({
        "bench": bench,
        "quick": quick,
        "machine": machine(),
        "rows": rows.iter().map(|r| json!({"what": r.what, "skiff": r.skiff, "reference": r.reference, "ratio": r.ratio})).collect::<Vec<_>>(),
    })
}

/// Markdown table rows of one or more runs' JSON.
pub fn markdown(runs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::from("| bench | what | Skiff | reference | ratio |\n|---|---|---|---|---|\n");
    for run in runs {
        let bench = run["bench"].as_str().ok_or_else(|| anyhow::anyhow!("a run without a \"bench\" name"))?;
        let rows = run["rows"].as_array().ok_or_else(|| anyhow::anyhow!("run {bench} has no \"rows\""))?;
        for r in rows {
            let cell = |k: &str| r[k].as_str().unwrap_or_default().replace('|', "\\|");
            let ratio = r["ratio"].as_f64().map(|x| format!("{x:.2}×")).unwrap_or_else(|| "—".into());
            out.push_str(&format!("| {bench} | {} | {} | {} | {ratio} |\n", cell("what"), cell("skiff"), cell("reference")));
        }
    }
    Ok(out)
}

/// The `p` quantile (0 to 1) of durations sorted ascending; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A count with thousands separators, as the README writes them.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_become_one_markdown_table() {
        let run = to_json("serve", false, &[Row::new("rps", "9,689 rps", "wasmtime serve: 6,903 rps", Some(1.4036)), Row::new("a | b", "1", "—", None)]);
        let table = markdown(&[run]).unwrap();
        assert!(table.contains("| serve | rps | 9,689 rps | wasmtime serve: 6,903 rps | 1.40× |"), "{table}");
        assert!(table.contains("| serve | a \\| b | 1 | — | — |"), "{table}");
        assert!(markdown(&[json!({"rows": []})]).is_err());
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!((percentile(&ms, 0.5), percentile(&ms, 0.99)), (Duration::from_millis(51), Duration::from_millis(99)));
        assert_eq!(percentile(&[], 0.99), Duration::ZERO);
    }
}
