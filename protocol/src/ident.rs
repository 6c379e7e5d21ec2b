//! Identifiers that travel in topics and payloads: site, agent, device, room and
//! point ids. They are restricted to a safe alphabet so that they can never
//! break a topic (`/`, `+`, `#`), a log line, or a URL.

use thiserror::Error;

/// Longest identifier accepted anywhere in the contract.
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} characters long, the limit is {MAX_ID_LEN}")]
    TooLong(usize),
    #[error("contains {0:?}; use only letters, digits and - _ . :")]
    BadChar(char),
}

/// Checks an identifier: 1–128 characters from `A-Z a-z 0-9 - _ . :`.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    let len = id.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong(len));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_accepted() {
        for id in ["site-1", "battery_room", "ups.1:output", "A9"] {
            assert_eq!(validate_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn topic_wildcards_and_separators_are_refused() {
        assert_eq!(validate_id("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(validate_id("a+"), Err(IdError::BadChar('+')));
        assert_eq!(validate_id("#"), Err(IdError::BadChar('#')));
        assert_eq!(validate_id("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(validate_id(&"x".repeat(129)), Err(IdError::TooLong(129)));
    }
}
