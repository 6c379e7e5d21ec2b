//! The web UI: files embedded at build time (`collector/ui/`), served at `/`
//! and `/ui/…`, gzipped once on first use and revalidated by ETag. With
//! `http.ui_dir` set they are read from that folder on every request
//! instead, so the UI can be worked on without rebuilding the collector.

use super::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, LazyLock, OnceLock};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

struct Asset {
    raw: &'static [u8],
    etag: String,
    gzipped: OnceLock<Vec<u8>>,
}

static ASSETS: LazyLock<HashMap<&'static str, Asset>> = LazyLock::new(|| {
    embedded::ASSETS
        .iter()
        .map(|(path, raw)| {
            let digest = ring::digest::digest(&ring::digest::SHA256, raw);
            let etag = crate::auth::hex(&digest.as_ref()[..12]);
            let asset = Asset {
                raw,
                etag: format!("\"{etag}\""),
                gzipped: OnceLock::new(),
            };
            (*path, asset)
        })
        .collect()
});

/// Paths of the embedded files (for tests and the size check).
pub fn embedded_paths() -> impl Iterator<Item = &'static str> {
    embedded::ASSETS.iter().map(|(p, _)| *p)
}

pub async fn index(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    serve(&st, "index.html", &headers).await
}

pub async fn asset(
    State(st): State<Arc<AppState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve(&st, &path, &headers).await
}

async fn serve(st: &AppState, path: &str, headers: &HeaderMap) -> Response {
    if let Some(dir) = &st.ui_dir {
        // Development: straight from disk, never cached. Only plain relative
        // paths, so nothing outside the folder can be named.
        // Plain relative names of the kinds of file a UI has; no hidden
        // files, so a folder set by mistake to the store's cannot serve it.
        let plain = path
            .split('/')
            .all(|c| !c.is_empty() && !c.starts_with('.') && !c.contains('\\'));
        let ui_file = [
            ".html", ".js", ".css", ".svg", ".png", ".ico", ".woff2", ".json",
        ]
        .iter()
        .any(|ext| path.ends_with(ext))
            || path.ends_with("LICENSE")
            || path.ends_with("VERSION");
        if !plain || !ui_file {
            return not_found(path);
        }
        return match tokio::fs::read(dir.join(path)).await {
            Ok(bytes) => (
                [
                    (header::CONTENT_TYPE, content_type(path)),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                bytes,
            )
                .into_response(),
            Err(_) => not_found(path),
        };
    }
    let Some(asset) = ASSETS.get(path) else {
        return not_found(path);
    };
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == asset.etag))
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(asset))]).into_response();
    }
    let gzip_ok = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut r = if gzip_ok && compressible(path) {
        let body = asset.gzipped.get_or_init(|| gzip(asset.raw));
        let mut r = body.clone().into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        asset.raw.into_response()
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::ETAG, etag(asset));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // Names are not fingerprinted: revalidate every time (a 304 is cheap).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn etag(a: &Asset) -> HeaderValue {
    HeaderValue::from_str(&a.etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

fn not_found(path: &str) -> Response {
    super::ApiError(StatusCode::NOT_FOUND, format!("no such UI file: {path}")).into_response()
}

fn compressible(path: &str) -> bool {
    !path.ends_with(".png") && !path.ends_with(".woff2")
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(raw);
    e.finish().unwrap_or_default()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        _ => "text/plain; charset=utf-8",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_scripts_are_embedded() {
        let paths: Vec<&str> = embedded_paths().collect();
        assert!(paths.contains(&"index.html"), "{paths:?}");
        assert!(paths.iter().any(|p| p.ends_with(".js")), "{paths:?}");
    }

    #[test]
    fn the_first_load_is_well_under_500_kb_compressed() {
        // Everything embedded, gzipped, as an upper bound of a first load.
        let total: usize = embedded::ASSETS
            .iter()
            .map(|(p, raw)| {
                if compressible(p) {
                    gzip(raw).len()
                } else {
                    raw.len()
                }
            })
            .sum();
        assert!(total < 500 * 1024, "{total} bytes");
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(
            content_type("vendor/uplot/LICENSE"),
            "text/plain; charset=utf-8"
        );
    }
}
