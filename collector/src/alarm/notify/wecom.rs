//! WeCom (企业微信) group robot: a markdown message.

use super::Request;
use serde_json::json;

pub fn request(url: &str, text: &str) -> Request {
    Request {
        url: url.to_owned(),
        body: json!({"msgtype": "markdown", "markdown": {"content": text}}),
    }
}
