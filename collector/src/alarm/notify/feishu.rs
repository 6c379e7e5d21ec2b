//! Feishu (飞书) group robot: a text message, signed in the body when the
//! robot has a secret.

use super::Request;
use serde_json::json;

/// base64(HMAC-SHA256(key = "{timestamp}\n{secret}", empty message)), timestamp in s.
pub fn sign(secret: &str, ts_s: i64) -> String {
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        format!("{ts_s}\n{secret}").as_bytes(),
    );
    crate::base64::encode(ring::hmac::sign(&key, b"").as_ref())
}

pub fn request(url: &str, secret: Option<&str>, text: &str, now_ms: i64) -> Request {
    let mut body = json!({"msg_type": "text", "content": {"text": text}});
    if let Some(secret) = secret {
        let ts = now_ms / 1000;
        body["timestamp"] = json!(ts.to_string());
        body["sign"] = json!(sign(secret, ts));
    }
    Request {
        url: url.to_owned(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_an_independent_implementation() {
        assert_eq!(
            sign("SEC123", 1_700_000_000),
            "j/tImR0k8vYXRsYw0+GHVQkV1v/J/8obOuMU7PE/KDo="
        );
    }
}
