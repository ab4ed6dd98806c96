//! Following the store's changes under a prefix, for the caches a server keeps of
//! objects other API servers sharing the store (etcd) may change: each change calls back.

use std::sync::Arc;

use crate::ApiServer;

/// Calls `changed` on every change under `prefix`, and once whenever the watch is (re)opened
/// (what changed while none was open is read anew). Runs until the process ends.
pub async fn follow(server: Arc<ApiServer>, prefix: &'static str, changed: fn(&ApiServer)) {
    loop {
        let mut watch = match server.store.watch(prefix, Some(server.store.current_revision())) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(%prefix, error = %e, "cannot follow the store; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        changed(&server);
        while let Some(Ok(_)) = watch.next().await {
            changed(&server);
        }
    }
}
