//! The one naming rule for topics, destinations and consumer groups, chosen so that a name is
//! valid as a NATS subject, a JetStream consumer name and an AMQP routing key or queue name.

use crate::BusError;

/// The longest name the bus accepts; JetStream and AMQP names stay well within their limits.
pub const MAX_NAME_LEN: usize = 200;

/// Checks a topic, destination or group name: non-empty dot-separated tokens of ASCII letters,
/// digits, `-` and `_` (no wildcards, no spaces), at most [`MAX_NAME_LEN`] bytes.
///
/// ```
/// assert!(ms_bus::validate_name("invoicing.invoice").is_ok());
/// assert!(ms_bus::validate_name("invoicing.*").is_err());
/// assert!(ms_bus::validate_name("a..b").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<(), BusError> {
    let invalid = |reason| {
        Err(BusError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it is longer than 200 bytes");
    }
    for token in name.split('.') {
        if token.is_empty() {
            return invalid("it has an empty token (leading, trailing or double dot)");
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid("only ASCII letters, digits, `-`, `_` and `.` are allowed");
        }
    }
    Ok(())
}
