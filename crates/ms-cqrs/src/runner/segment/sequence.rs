//! Per-key sequence checks of bus deliveries: a duplicate is settled without applying, an
//! event ahead of its key's previous one is delivered again later.

use std::collections::HashMap;

use ms_bus::Envelope;

use super::{Failure, Outcome, Segment};
use crate::store::Store;
use crate::{ApplyError, Projection};

impl<DB: Store, P: Projection<DB>> Segment<DB, P> {
    /// Bus deliveries: `Ok(Some(n))` to apply sequence `n`, `Ok(None)` to apply an event
    /// without a sequence (recorded as seen), `Err(outcome)` to settle without applying.
    pub(super) async fn check_delivery(
        &self,
        conn: &mut DB::Connection,
        envelope: &Envelope,
        key: &str,
        sequences: &mut HashMap<String, i64>,
    ) -> Result<Result<Option<i64>, Outcome>, Failure> {
        let (tables, name) = (&self.shared.tables, &*self.shared.name);
        match sequence_of(envelope) {
            Some(sequence) => {
                let last = match sequences.get(key) {
                    Some(last) => *last,
                    None => DB::key_sequence(conn, tables, name, self.version, key)
                        .await?
                        .unwrap_or(0),
                };
                sequences.insert(key.to_owned(), last);
                Ok(if sequence <= last {
                    Err(Outcome::Duplicate)
                } else if sequence > last + 1 {
                    Err(Outcome::OutOfOrder)
                } else {
                    Ok(Some(sequence))
                })
            }
            None => {
                // Once per event: its source and id, as CloudEvents identifies it (the id alone
                // is only unique within its source), the key the brokers and the inbox use.
                let key = envelope.dedup_key();
                let first =
                    DB::record_seen(conn, tables, name, self.version, &key, envelope.id()).await?;
                Ok(if first {
                    Ok(None)
                } else {
                    Err(Outcome::Duplicate)
                })
            }
        }
    }

    pub(super) async fn advance_sequence(
        &self,
        conn: &mut DB::Connection,
        key: &str,
        sequence: i64,
        sequences: &mut HashMap<String, i64>,
    ) -> Result<(), Failure> {
        let moved = DB::advance_key_sequence(
            conn,
            &self.shared.tables,
            &self.shared.name,
            self.version,
            key,
            sequence,
        )
        .await?;
        if !moved {
            // Another instance of this projection applied it first: roll back, and the
            // retry will see it as a duplicate.
            return Err(Failure::Apply(ApplyError::transient(format!(
                "key `{key}`: sequence {sequence} was applied concurrently"
            ))));
        }
        sequences.insert(key.to_owned(), sequence);
        Ok(())
    }
}

/// The `sequence` extension: the event's 1-based number among its key's events.
pub(crate) fn sequence_of(envelope: &Envelope) -> Option<i64> {
    envelope
        .extension(crate::SEQUENCE_EXTENSION)
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|s| *s > 0)
}
