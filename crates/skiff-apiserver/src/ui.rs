//! The web dashboard at `/ui`: plain ES modules and a stylesheet, embedded in the binary
//! and served with no build step. The assets hold no cluster data, so they are served to
//! anyone; the page then calls the API with the bearer token its user pasted, and sees
//! only what that token may see. The Content-Security-Policy lets the page run its own
//! scripts only and talk to this server only.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};

use crate::error::ApiError;

const ASSETS: [(&str, &str, &str); 7] = [
    ("index.html", "text/html; charset=utf-8", include_str!("../ui/index.html")),
    ("style.css", "text/css; charset=utf-8", include_str!("../ui/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../ui/api.js")),
    ("collection.js", "text/javascript; charset=utf-8", include_str!("../ui/collection.js")),
    ("table.js", "text/javascript; charset=utf-8", include_str!("../ui/table.js")),
    ("resources.js", "text/javascript; charset=utf-8", include_str!("../ui/resources.js")),
];

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Whether `path` is one of the dashboard's (served without credentials).
pub fn serves(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

pub async fn root() -> Redirect {
    Redirect::permanent("/ui/")
}

pub async fn index() -> Response {
    asset(Path("index.html".into())).await
}

pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(file, ..)| *file == name) {
        Some((_, media, text)) => (
            [
                (header::CONTENT_TYPE, *media),
                (header::CONTENT_SECURITY_POLICY, POLICY),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
                // Revalidated each load, so an upgraded server serves its own page.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *text,
        ).into_response(),
        None => ApiError::no_route(format!("the dashboard has no file {name:?}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_module_the_page_imports_is_served() {
        for (_, _, text) in super::ASSETS {
            for import in text.lines().filter_map(|l| l.split(" from \"./").nth(1)) {
                let file = import.trim_end_matches("\";");
                assert!(super::ASSETS.iter().any(|(f, ..)| *f == file), "{file} is imported but not served");
            }
        }
    }
}
