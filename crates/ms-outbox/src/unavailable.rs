//! Whether a database error means the database could not be reached, as opposed to the
//! database refusing a statement: the one list the outbox's relay and ms-cqrs's executor and
//! runners decide by.

/// Whether `error` says the database is unavailable (the connection failed or dropped, the
/// pool gave up or was closed, the server is shutting down) rather than that it refused the
/// statement. Such a failure says nothing about the data: retry later, answer 503.
///
/// ```
/// assert!(ms_outbox::is_database_unavailable(&sqlx::Error::PoolTimedOut));
/// assert!(!ms_outbox::is_database_unavailable(&sqlx::Error::RowNotFound));
/// ```
pub fn is_database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        // Not `Protocol`: the server said something this client does not understand, which
        // is a bug or a mismatch to report (500), not an outage to wait out.
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE class 08: connection exception; 57P01: admin_shutdown (the server is
        // stopping and closed this session).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code == "57P01"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_database_unavailable;

    #[test]
    fn connection_failures_are_unavailable_and_refusals_are_not() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_database_unavailable(&sqlx::Error::Io(io)));
        assert!(is_database_unavailable(&sqlx::Error::PoolClosed));
        assert!(!is_database_unavailable(&sqlx::Error::Protocol(
            "eof".into()
        )));
        assert!(!is_database_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_database_unavailable(&sqlx::Error::ColumnNotFound(
            "x".into()
        )));
    }
}
