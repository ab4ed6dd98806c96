//! placeholder
pub struct Options { pub node_monitor_grace_period: std::time::Duration }
pub async fn run(_client: kube::Client, _options: Options) {}
