//! The generic JSON webhook: the notification document as it is
//! (docs/ALARMS.md), with the `Idempotency-Key` header the delivery loop adds.

use super::Request;
use serde_json::Value;

pub fn request(url: &str, doc: &Value) -> Request {
    Request {
        url: url.to_owned(),
        body: doc.clone(),
    }
}
