//! The headers a dead letter carries, added to the original message by every adapter.
//!
//! A dead letter is the message exactly as it was received (headers and body), sent to the
//! subscription's dead-letter destination (a command destination) with these headers added.

/// Why the message was dead-lettered: the handler's last error, the decoding error, or the
/// handler's own reason.
pub const REASON_HEADER: &str = "ms-dead-letter-reason";
/// How many times the message had been delivered.
pub const DELIVERIES_HEADER: &str = "ms-dead-letter-deliveries";
/// The topic or destination it was consumed from.
pub const ORIGIN_HEADER: &str = "ms-dead-letter-origin";
/// The consumer group that gave up on it (events only).
pub const GROUP_HEADER: &str = "ms-dead-letter-group";

/// The longest reason written into a header; longer ones are cut at a character boundary
/// (brokers limit header sizes, and the first kilobyte of an error says what happened).
pub const MAX_REASON_LEN: usize = 1024;

/// The dead-letter headers for a delivery, ready to be appended to the original's.
pub fn headers(info: &crate::DeliveryInfo, reason: &str) -> Vec<(String, String)> {
    let mut reason = reason.replace(['\r', '\n'], " ");
    if reason.len() > MAX_REASON_LEN {
        let mut end = MAX_REASON_LEN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    let mut headers = vec![
        (REASON_HEADER.to_owned(), reason),
        (DELIVERIES_HEADER.to_owned(), info.attempt.to_string()),
        (ORIGIN_HEADER.to_owned(), info.origin.to_string()),
    ];
    if let Some(group) = &info.group {
        headers.push((GROUP_HEADER.to_owned(), group.to_string()));
    }
    headers
}
