//! How topics and destinations map to JetStream subjects, streams and consumers.
//!
//! A topic `invoicing.invoice` under prefix `ms` is the subject `ms.ev.invoicing.invoice`,
//! stored in the stream `ms_EV_invoicing_invoice`; each consumer group is a durable pull
//! consumer of that stream named after the group. A command destination `payments.capture` is
//! the subject `ms.cmd.payments.capture` in the work-queue stream `ms_CMD_payments_capture`,
//! consumed by one durable consumer shared by all its instances.

/// The durable consumer that all instances of a command destination share.
pub(super) const COMMAND_CONSUMER: &str = "handlers";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Events,
    Commands,
}

impl Kind {
    fn subject_token(self) -> &'static str {
        match self {
            Kind::Events => "ev",
            Kind::Commands => "cmd",
        }
    }

    fn stream_token(self) -> &'static str {
        match self {
            Kind::Events => "EV",
            Kind::Commands => "CMD",
        }
    }
}

pub(super) fn subject(prefix: &str, kind: Kind, name: &str) -> String {
    format!("{prefix}.{}.{name}", kind.subject_token())
}

/// Stream and consumer names may not contain `.`; bus names are dot-separated tokens of
/// letters, digits, `-` and `_`, so `.` becomes `_`. (Two names that differ only there, such
/// as `a.b` and `a_b`, would share a stream name; creating the second fails with a broker
/// error rather than mixing their messages, because the stream's subject differs.)
pub(super) fn stream(prefix: &str, kind: Kind, name: &str) -> String {
    format!(
        "{}_{}_{}",
        prefix.replace('.', "_"),
        kind.stream_token(),
        name.replace('.', "_")
    )
}

pub(super) fn consumer(group: &str) -> String {
    group.replace('.', "_")
}
