use std::io;

/// What went wrong while preparing a test resource or a private server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// The URL could not be parsed, or names a host that is not on this machine.
    #[error("invalid service URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials included: these are test credentials).
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A server program (such as `nats-server`) is not installed where we looked.
    #[error("`{program}` not found (looked in PATH, /usr/sbin and /usr/local/sbin)")]
    ProgramNotFound {
        /// The program's file name.
        program: &'static str,
    },
    /// A private server did not start listening in time.
    #[error("{program} did not listen on 127.0.0.1:{port} within {waited_ms} ms; its log: {log}")]
    StartTimeout {
        /// The program's file name.
        program: &'static str,
        /// The port it should have listened on.
        port: u16,
        /// How long we waited.
        waited_ms: u128,
        /// The tail of its log file.
        log: String,
    },
    /// Spawning, killing or waiting for a process, or reading a file, failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The service answered but refused a setup step.
    #[error("{service} setup failed: {reason}")]
    Setup {
        /// Which service.
        service: &'static str,
        /// What it said.
        reason: String,
    },
}
