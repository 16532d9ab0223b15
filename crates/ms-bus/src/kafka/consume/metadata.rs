//! What a commit tells the partition's next owner besides the offset: which records had been
//! delivered already, so that their deliveries are counted on rather than started again at 1.
//!
//! Kafka keeps no delivery count; a commit's metadata string (up to 4,096 bytes by default on
//! Apache Kafka) is the one place a consumer group keeps per-partition state. Confluent's
//! parallel-consumer stores its map of completed offsets there; this adapter stores less:
//! the highest offset handed to a handler, and how often the record at the committed offset
//! was delivered. A record that crashes its consumer every time is thus still dead-lettered
//! after the maximum number of deliveries, as on NATS and RabbitMQ.

/// The metadata of one partition's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommitMetadata {
    /// The highest offset handed to a handler (`offset - 1` when none was).
    pub(crate) delivered_high: i64,
    /// How many times the record at the committed offset was delivered (0: never).
    pub(crate) head_deliveries: u32,
}

/// The tag that marks metadata written by this adapter (other consumers write their own).
const TAG: &str = "ms-bus/1";

impl CommitMetadata {
    /// `ms-bus/1 delivered=<offset> head=<deliveries>`.
    pub(crate) fn encode(self) -> String {
        format!(
            "{TAG} delivered={} head={}",
            self.delivered_high, self.head_deliveries
        )
    }

    /// Reads what [`encode`](Self::encode) wrote; anything else (another consumer's
    /// metadata, garbage) is `None`, and the records count from 1.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        if parts.next()? != TAG {
            return None;
        }
        let delivered_high = parts.next()?.strip_prefix("delivered=")?.parse().ok()?;
        let head_deliveries = parts.next()?.strip_prefix("head=")?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            delivered_high,
            head_deliveries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CommitMetadata;

    #[test]
    fn round_trips_and_refuses_what_it_did_not_write() {
        let m = CommitMetadata {
            delivered_high: 41,
            head_deliveries: 3,
        };
        assert_eq!(CommitMetadata::parse(&m.encode()), Some(m));
        for foreign in [
            "",
            "ms-bus/1",
            "ms-bus/2 delivered=1 head=1",
            "ms-bus/1 delivered=x head=1",
            "ms-bus/1 delivered=1 head=-1",
            "ms-bus/1 delivered=1 head=1 more",
            "{\"pc\":\"bitset\"}",
        ] {
            assert_eq!(CommitMetadata::parse(foreign), None, "{foreign:?}");
        }
    }
}
