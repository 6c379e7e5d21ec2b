//! Who may speak for an agent, and for the collector to it.
//!
//! A broker without per-topic ACLs lets any client publish on any topic. A
//! forged confirmation on an agent's `ack` topic made it drop unstored
//! batches from its spool; a forged batch would store readings (and raise
//! alarms) in an agent's name. So every message between an agent and the
//! collector carries an HMAC-SHA256 under a key only the two of them hold.
//!
//! Why a shared key and not a signature: both directions need
//! authentication, and with one collector secret the collector derives
//! each agent's key on demand ([`AgentKey::derive`]) instead of keeping a
//! list of public keys; an agent holds only its own key, so a stolen edge
//! box can speak for that one agent and nobody else. HMAC-SHA256 comes from
//! `ring`, already built for rustls.
//!
//! On the wire the tag is the payload's last member, `"mac":"<64 hex>"`. It
//! covers the topic and the payload without that member, so a message can
//! be neither moved to another agent's topic, nor turned from a batch into
//! a confirmation, nor altered. A replayed message is harmless: batches are
//! stored once by `(site, agent, seq)`, and a confirmation replayed only
//! repeats what was true.

use ring::hmac;
use thiserror::Error;

/// An agent's key: 32 bytes, written as 64 hex digits in its config.
#[derive(Clone)]
pub struct AgentKey(hmac::Key);

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentKey(…)")
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no \"mac\" at the end of the payload: not signed")]
    Unsigned,
    #[error("the \"mac\" does not match: signed with another key, or altered")]
    Mismatch,
    #[error("an agent key is 64 hex digits (from `roomguard-collector agent-key`)")]
    BadKey,
    #[error("the collector's agent secret must be at least {MIN_SECRET_LEN} characters")]
    ShortSecret,
}

/// Shortest collector secret accepted (`roomguard-collector gen-secret`
/// makes 64 hex digits).
pub const MIN_SECRET_LEN: usize = 32;

const TAG_HEX: usize = 64;
/// What precedes the tag at the end of a signed payload.
const MEMBER: &[u8] = b"\"mac\":\"";

/// The collector's `[agents] secret`, ready to derive agent keys: its HMAC
/// key is set up once, not for every message.
pub struct AgentSecret(hmac::Key);

impl std::fmt::Debug for AgentSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentSecret(…)")
    }
}

impl AgentSecret {
    pub fn new(secret: &str) -> Result<AgentSecret, AuthError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(AuthError::ShortSecret);
        }
        Ok(AgentSecret(hmac::Key::new(
            hmac::HMAC_SHA256,
            secret.as_bytes(),
        )))
    }

    fn derive(&self, site: &str, agent: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        // Zero bytes cannot occur in ids, so (site, agent) pairs never collide.
        ctx.update(b"roomguard agent key v1\0");
        ctx.update(site.as_bytes());
        ctx.update(b"\0");
        ctx.update(agent.as_bytes());
        ctx.sign()
    }

    /// The key of agent `agent` of `site`.
    pub fn key(&self, site: &str, agent: &str) -> AgentKey {
        AgentKey::from_bytes(self.derive(site, agent).as_ref())
    }

    /// Its hex form, for the agent's config (`mqtt.key`).
    pub fn key_hex(&self, site: &str, agent: &str) -> String {
        hex(self.derive(site, agent).as_ref())
    }
}

impl AgentKey {
    /// The key of agent `agent` of `site` under the collector's `secret`.
    pub fn derive(secret: &str, site: &str, agent: &str) -> Result<AgentKey, AuthError> {
        Ok(AgentSecret::new(secret)?.key(site, agent))
    }

    /// The hex form of [`AgentKey::derive`], for the agent's config.
    pub fn derive_hex(secret: &str, site: &str, agent: &str) -> Result<String, AuthError> {
        Ok(AgentSecret::new(secret)?.key_hex(site, agent))
    }

    fn from_bytes(bytes: &[u8]) -> AgentKey {
        AgentKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The key as given in an agent's config (`mqtt.key`).
    pub fn from_hex(text: &str) -> Result<AgentKey, AuthError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(AuthError::BadKey);
        }
        let bytes = decode_hex(text.as_bytes()).ok_or(AuthError::BadKey)?;
        Ok(AgentKey::from_bytes(&bytes))
    }

    fn tag(&self, topic: &str, body_without_close: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(topic.as_bytes());
        ctx.update(b"\0");
        ctx.update(body_without_close);
        ctx.update(b"}");
        ctx.sign()
    }

    /// `payload` (a JSON object) with its tag for `topic` added as the last member.
    pub fn sign(&self, topic: &str, payload: &[u8]) -> Vec<u8> {
        let end = payload
            .iter()
            .rposition(|&b| b == b'}')
            .unwrap_or(payload.len());
        let body = &payload[..end];
        let tag = self.tag(topic, body);
        let mut out = Vec::with_capacity(end + MEMBER.len() + TAG_HEX + 4);
        out.extend_from_slice(body);
        let empty = body.iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if !empty {
            out.push(b',');
        }
        out.extend_from_slice(MEMBER);
        out.extend_from_slice(hex(tag.as_ref()).as_bytes());
        out.extend_from_slice(b"\"}");
        out
    }

    /// Checks that `payload` carries a tag made with this key for `topic`.
    pub fn verify(&self, topic: &str, payload: &[u8]) -> Result<(), AuthError> {
        let (body, tag) = split_signed(payload).ok_or(AuthError::Unsigned)?;
        let expected = self.tag(topic, body);
        // Constant time, so timing tells an attacker nothing about the tag.
        let diff = expected
            .as_ref()
            .iter()
            .zip(&tag)
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(AuthError::Mismatch)
        }
    }
}

/// A signed payload's body (without the tag member and the closing brace)
/// and its tag; `None` when it does not end in a well-formed tag.
fn split_signed(payload: &[u8]) -> Option<(&[u8], [u8; 32])> {
    let end = payload.len().checked_sub(2)?;
    if &payload[end..] != b"\"}" {
        return None;
    }
    let hex_start = end.checked_sub(TAG_HEX)?;
    let member_start = hex_start.checked_sub(MEMBER.len())?;
    if &payload[member_start..hex_start] != MEMBER {
        return None;
    }
    let bytes = decode_hex(&payload[hex_start..end])?;
    let mut tag = [0u8; 32];
    tag.copy_from_slice(&bytes);
    // The tag member follows a comma, or opens an otherwise empty object.
    let body = match payload[..member_start].last() {
        Some(b',') => &payload[..member_start - 1],
        Some(b'{') => &payload[..member_start],
        _ => return None,
    };
    Some((body, tag))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn key(agent: &str) -> AgentKey {
        AgentKey::derive(SECRET, "s", agent).unwrap()
    }

    #[test]
    fn a_signed_payload_verifies_and_stays_json_with_the_same_fields() {
        let k = key("a");
        let signed = k.sign("roomguard/v1/s/a/ack", br#"{"v":1,"stored":[[1,3]]}"#);
        k.verify("roomguard/v1/s/a/ack", &signed).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&signed).unwrap();
        assert_eq!(v["stored"][0][1], 3);
        assert_eq!(v["mac"].as_str().unwrap().len(), 64);
        let empty = k.sign("t", b"{}");
        assert!(serde_json::from_slice::<serde_json::Value>(&empty).is_ok());
        k.verify("t", &empty).unwrap();
    }

    #[test]
    fn another_key_topic_or_body_is_refused() {
        let k = key("a");
        let signed = k.sign("roomguard/v1/s/a/ack", br#"{"v":1,"stored":[[1,3]]}"#);
        assert_eq!(
            key("b").verify("roomguard/v1/s/a/ack", &signed),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            k.verify("roomguard/v1/s/a/batch", &signed),
            Err(AuthError::Mismatch),
            "a confirmation's tag does not make a batch"
        );
        let altered = String::from_utf8(signed).unwrap().replace("[1,3]", "[1,9]");
        assert_eq!(
            k.verify("roomguard/v1/s/a/ack", altered.as_bytes()),
            Err(AuthError::Mismatch)
        );
        assert_eq!(
            k.verify("t", br#"{"v":1,"stored":[[1,1000000000]]}"#),
            Err(AuthError::Unsigned)
        );
    }

    #[test]
    fn a_key_round_trips_through_its_hex_form_and_short_secrets_are_refused() {
        let hex = AgentKey::derive_hex(SECRET, "s", "a").unwrap();
        let k = AgentKey::from_hex(&hex).unwrap();
        let signed = k.sign("t", br#"{"v":1}"#);
        key("a").verify("t", &signed).unwrap();
        assert_eq!(AgentKey::from_hex("abc").unwrap_err(), AuthError::BadKey);
        assert_eq!(
            AgentKey::from_hex(&"zz".repeat(32)).unwrap_err(),
            AuthError::BadKey
        );
        assert_eq!(
            AgentKey::derive("short", "s", "a").unwrap_err(),
            AuthError::ShortSecret
        );
        assert_ne!(
            AgentKey::derive_hex(SECRET, "s", "ab").unwrap(),
            AgentKey::derive_hex(SECRET, "sa", "b").unwrap()
        );
    }

    proptest! {
        #[test]
        fn verifying_any_bytes_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = key("a").verify("t", &payload);
        }
    }
}
