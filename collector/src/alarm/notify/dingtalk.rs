//! DingTalk (钉钉) group robot: a markdown message, signed when the robot has
//! a secret (timestamp and signature in the URL).

use super::{url_encode, Request};
use serde_json::json;

/// base64(HMAC-SHA256(secret, "{timestamp}\n{secret}")), timestamp in ms.
pub fn sign(secret: &str, ts_ms: i64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    crate::base64::encode(ring::hmac::sign(&key, format!("{ts_ms}\n{secret}").as_bytes()).as_ref())
}

pub fn request(url: &str, secret: Option<&str>, text: &str, now_ms: i64) -> Request {
    let title = text.lines().next().unwrap_or("RoomGuard").to_owned();
    let url = match secret {
        Some(secret) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!(
                "{url}{sep}timestamp={now_ms}&sign={}",
                url_encode(&sign(secret, now_ms))
            )
        }
        None => url.to_owned(),
    };
    Request {
        url,
        body: json!({"msgtype": "markdown", "markdown": {"title": title, "text": text}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_an_independent_implementation() {
        assert_eq!(
            sign("SEC123", 1_700_000_000_000),
            "lkcPI1uoxBY1gUnCnnPH1Kkru0Hqjo7rFpA3haIVhEQ="
        );
    }

    #[test]
    fn a_signed_request_carries_timestamp_and_escaped_signature() {
        let r = request(
            "https://oapi.dingtalk.com/robot/send?access_token=t",
            Some("SEC123"),
            "【一级告警】x",
            1_700_000_000_000,
        );
        assert!(
            r.url.contains(
                "&timestamp=1700000000000&sign=lkcPI1uoxBY1gUnCnnPH1Kkru0Hqjo7rFpA3haIVhEQ%3D"
            ),
            "{}",
            r.url
        );
        assert_eq!(r.body["markdown"]["title"], "【一级告警】x");
    }
}
