//! Parked events: parking one (and, by policy, its key's later ones), and serving the
//! handle's replay and discard requests.

use std::sync::atomic::Ordering;

use ms_bus::Envelope;

use super::sequence::sequence_of;
use super::{Control, Segment, Work};
use crate::projection::handles;
use crate::store::{ParkedRow, Store, now_micros};
use crate::{ApplyError, Projection, ProjectionError};

impl<DB: Store, P: Projection<DB>> Segment<DB, P> {
    pub(super) async fn park(
        &mut self,
        work: &mut Work,
        error: &ApplyError,
        attempts: u32,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.shared.pool.begin().await?;
        let decoded = work.decode();
        let row = match decoded.and_then(|()| work.envelope()) {
            Ok(envelope) => parked_row(
                self.version,
                work,
                envelope,
                &error.to_string(),
                false,
                attempts,
            ),
            Err(_) => ParkedRow {
                id: 0,
                version: self.version,
                key: work.key.clone(),
                position: work.position,
                event_id: String::new(),
                event_type: String::new(),
                envelope: work.raw.clone().unwrap_or_default(),
                error: error.to_string(),
                blocked: false,
                attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
                parked_at: now_micros(),
            },
        };
        DB::park(&mut tx, &self.shared.tables, &self.shared.name, &row).await?;
        // A parked event is handled as far as its key's sequence goes: the next one may come.
        if work.delivery.is_some()
            && let Some(sequence) = work.envelope.as_ref().and_then(sequence_of)
        {
            DB::advance_key_sequence(
                &mut tx,
                &self.shared.tables,
                &self.shared.name,
                self.version,
                &work.key,
                sequence,
            )
            .await?;
        }
        if let Some(position) = work.position {
            self.save_checkpoint(&mut tx, position).await?;
        }
        tx.commit().await
    }

    pub(super) async fn serve(&mut self, control: Control) {
        match control {
            Control::Replay { key, reply } => {
                let result = self.replay(&key).await;
                if result.is_ok() {
                    self.parked_keys.remove(&key);
                }
                let _ = reply.send(result);
            }
            Control::Discard { key, reply } => {
                let result = async {
                    let mut tx = self.shared.pool.begin().await?;
                    let n = DB::unpark(
                        &mut tx,
                        &self.shared.tables,
                        &self.shared.name,
                        self.version,
                        &key,
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(n)
                }
                .await;
                if result.is_ok() {
                    self.parked_keys.remove(&key);
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Applies a key's parked events in order, in one transaction, and removes them.
    pub(super) async fn replay(&mut self, key: &str) -> Result<u64, ProjectionError> {
        let (tables, name) = (&self.shared.tables, &*self.shared.name);
        let mut tx = self.shared.pool.begin().await?;
        let rows = DB::parked(&mut tx, tables, name, self.version, Some(key), i64::MAX).await?;
        for row in &rows {
            let envelope = ms_bus::codec::from_json(row.envelope.as_bytes()).map_err(|e| {
                ProjectionError::Stopped {
                    name: name.to_owned(),
                    reason: format!("parked event {} does not decode: {e}", row.id),
                }
            })?;
            if !handles(self.shared.projection.event_types(), envelope.ty()) {
                continue;
            }
            let ctx = self.ctx.at(row.position, false);
            self.apply(&mut tx, &envelope, &ctx)
                .await
                .map_err(|e| ProjectionError::Stopped {
                    name: name.to_owned(),
                    reason: format!("replaying parked event {} failed again: {e}", row.id),
                })?;
        }
        let n = DB::unpark(&mut tx, tables, name, self.version, key).await?;
        tx.commit().await?;
        self.progress.applied.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

pub(super) fn parked_row(
    version: i32,
    work: &Work,
    envelope: &Envelope,
    error: &str,
    blocked: bool,
    attempts: u32,
) -> ParkedRow {
    let json = ms_bus::codec::to_json(envelope);
    ParkedRow {
        id: 0,
        version,
        key: work.key.clone(),
        position: work.position,
        event_id: envelope.id().to_owned(),
        event_type: envelope.ty().to_owned(),
        envelope: String::from_utf8_lossy(&json).into_owned(),
        error: error.to_owned(),
        blocked,
        attempts: i32::try_from(attempts).unwrap_or(i32::MAX),
        parked_at: now_micros(),
    }
}
