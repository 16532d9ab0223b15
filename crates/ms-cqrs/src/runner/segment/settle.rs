//! Settling bus deliveries once their batch committed (or did not).

use std::sync::atomic::Ordering;

use super::{OUT_OF_ORDER_DELAY, Outcome, Segment, Work};
use crate::Projection;
use crate::store::Store;

impl<DB: Store, P: Projection<DB>> Segment<DB, P> {
    /// Settles a committed batch: counters, and the bus deliveries.
    pub(super) async fn settle(&self, batch: &[Work], outcomes: &[Outcome]) {
        for (work, outcome) in batch.iter().zip(outcomes) {
            let counter = match outcome {
                Outcome::Applied => &self.progress.applied,
                Outcome::Skipped | Outcome::Duplicate => &self.progress.skipped,
                Outcome::Parked => &self.progress.parked,
                Outcome::OutOfOrder => &self.progress.out_of_order,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(ticket) = work.ticket {
                self.progress.settled(ticket);
            }
            if let Some((acker, _)) = &work.delivery {
                // A lost settlement means a redelivery, which the sequence or the seen-table
                // turns into a duplicate: logging is enough.
                let settled = if *outcome == Outcome::OutOfOrder {
                    acker.retry(OUT_OF_ORDER_DELAY).await
                } else {
                    acker.ack().await
                };
                if let Err(e) = settled {
                    self.progress
                        .error(&format!("settling a delivery failed: {e}"));
                }
            }
        }
    }
}
