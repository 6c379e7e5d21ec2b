//! The versioned topic scheme: `roomguard/{version}/{site}/{agent}/{kind}`.
//!
//! The version is in the topic as well as in the payload so that a broker ACL
//! can be written per version and per agent, and so that a collector can see
//! (and count) traffic of a version it does not speak instead of never
//! subscribing to it.

use crate::ident::{validate_id, IdError};
use crate::{PROTOCOL_VERSION, TOPIC_ROOT};
use thiserror::Error;

/// What a message on a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// One device poll: a [`crate::Batch`], QoS 1, not retained.
    Batch,
    /// The agent's health: a [`crate::Status`], QoS 1, retained, with a last will.
    Status,
    /// Collector to agent: which batches are committed (a [`crate::Confirm`]),
    /// QoS 1, not retained. Only then may the agent forget them.
    Ack,
}

impl TopicKind {
    fn as_str(self) -> &'static str {
        match self {
            TopicKind::Batch => "batch",
            TopicKind::Status => "status",
            TopicKind::Ack => "ack",
        }
    }
}

/// A parsed RoomGuard topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub version: u32,
    pub site: String,
    pub agent: String,
    pub kind: TopicKind,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("topic {0:?} is not of the form roomguard/v<N>/<site>/<agent>/<batch|status>")]
    Malformed(String),
    #[error("topic version v{0} is not known to this build (it speaks v{PROTOCOL_VERSION})")]
    UnknownVersion(u32),
    #[error("topic site {0:?} {1}")]
    BadSite(String, IdError),
    #[error("topic agent {0:?} {1}")]
    BadAgent(String, IdError),
}

impl Topic {
    pub fn batch(site: &str, agent: &str) -> String {
        Self::build(site, agent, TopicKind::Batch)
    }

    pub fn status(site: &str, agent: &str) -> String {
        Self::build(site, agent, TopicKind::Status)
    }

    pub fn ack(site: &str, agent: &str) -> String {
        Self::build(site, agent, TopicKind::Ack)
    }

    fn build(site: &str, agent: &str, kind: TopicKind) -> String {
        format!(
            "{TOPIC_ROOT}/v{PROTOCOL_VERSION}/{site}/{agent}/{}",
            kind.as_str()
        )
    }

    /// The filters a collector subscribes to: what agents send, in every
    /// version, so that traffic of an unknown version is seen and rejected
    /// with a reason rather than ignored. Not `ack`: those are its own.
    pub fn collector_filters() -> [String; 2] {
        [
            format!("{TOPIC_ROOT}/+/+/+/batch"),
            format!("{TOPIC_ROOT}/+/+/+/status"),
        ]
    }

    /// Parses a topic, checking the version and both identities.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let malformed = || TopicError::Malformed(truncate(topic));
        let mut parts = topic.split('/');
        let (Some(root), Some(ver), Some(site), Some(agent), Some(kind), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        if root != TOPIC_ROOT {
            return Err(malformed());
        }
        let version: u32 = ver
            .strip_prefix('v')
            .and_then(|n| n.parse().ok())
            .ok_or_else(malformed)?;
        let kind = match kind {
            "batch" => TopicKind::Batch,
            "status" => TopicKind::Status,
            "ack" => TopicKind::Ack,
            _ => return Err(malformed()),
        };
        if version != PROTOCOL_VERSION {
            return Err(TopicError::UnknownVersion(version));
        }
        validate_id(site).map_err(|e| TopicError::BadSite(truncate(site), e))?;
        validate_id(agent).map_err(|e| TopicError::BadAgent(truncate(agent), e))?;
        Ok(Topic {
            version,
            site: site.to_owned(),
            agent: agent.to_owned(),
            kind,
        })
    }
}

/// Keeps hostile topics from flooding logs.
fn truncate(s: &str) -> String {
    s.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_topics_parse_back() {
        let t = Topic::parse(&Topic::batch("site-a", "edge-1")).unwrap();
        assert_eq!(t.site, "site-a");
        assert_eq!(t.agent, "edge-1");
        assert_eq!(t.kind, TopicKind::Batch);
        let t = Topic::parse(&Topic::status("site-a", "edge-1")).unwrap();
        assert_eq!(t.kind, TopicKind::Status);
        let t = Topic::parse(&Topic::ack("site-a", "edge-1")).unwrap();
        assert_eq!(t.kind, TopicKind::Ack);
    }

    #[test]
    fn unknown_version_is_named() {
        assert_eq!(
            Topic::parse("roomguard/v2/s/a/batch"),
            Err(TopicError::UnknownVersion(2))
        );
    }

    #[test]
    fn foreign_and_short_topics_are_malformed() {
        for t in [
            "other/v1/s/a/batch",
            "roomguard/v1/s/a",
            "roomguard/v1/s/a/batch/extra",
            "roomguard/x1/s/a/batch",
            "roomguard/v1/s/a/readings",
            "",
        ] {
            assert!(
                matches!(Topic::parse(t), Err(TopicError::Malformed(_))),
                "{t}"
            );
        }
    }
}
