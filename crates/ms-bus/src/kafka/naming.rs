//! How bus names map to Kafka topics and consumer groups.
//!
//! With prefix `ms`, topic `invoicing.invoice` is the Kafka topic `ms.ev.invoicing.invoice`,
//! read by group `reporting` as the Kafka consumer group `ms.ev.invoicing.invoice:reporting`;
//! destination `payments.capture` is the topic `ms.cmd.payments.capture`, read by the one
//! group `ms.cmd.payments.capture:handlers`. Kafka allows `.`, `_`, `-` and letters and
//! digits in topic names (at most 249 characters): every bus name qualifies, and `ev` / `cmd`
//! keep an event topic and a command destination of the same name apart. The group of a topic
//! includes the topic, so that a service's group subscribed to two topics is two Kafka groups
//! whose rebalances do not stop each other (as a RabbitMQ queue `{topic}:{group}` is per topic).

/// The group that all instances of a command destination share.
pub(super) const COMMAND_GROUP: &str = "handlers";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Events,
    Commands,
}

impl Kind {
    fn token(self) -> &'static str {
        match self {
            Kind::Events => "ev",
            Kind::Commands => "cmd",
        }
    }
}

pub(super) fn topic(prefix: &str, kind: Kind, name: &str) -> String {
    format!("{prefix}.{}.{name}", kind.token())
}

pub(super) fn group(topic: &str, group: &str) -> String {
    format!("{topic}:{group}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_module_docs() {
        let t = topic("ms", Kind::Events, "invoicing.invoice");
        assert_eq!(t, "ms.ev.invoicing.invoice");
        assert_eq!(group(&t, "reporting"), "ms.ev.invoicing.invoice:reporting");
        let c = topic("ms", Kind::Commands, "payments.capture");
        assert_eq!(group(&c, COMMAND_GROUP), "ms.cmd.payments.capture:handlers");
    }
}
