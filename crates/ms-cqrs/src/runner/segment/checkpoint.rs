//! A segment's checkpoint: how far it has applied, stored in the read model's transaction,
//! and moved on while idle so that a restart does not re-read what its neighbours applied.

use std::time::Instant;

use super::{IDLE_CHECKPOINT_INTERVAL, Segment};
use crate::Projection;
use crate::store::Store;

impl<DB: Store, P: Projection<DB>> Segment<DB, P> {
    pub(super) async fn save_checkpoint(
        &mut self,
        conn: &mut DB::Connection,
        position: i64,
    ) -> Result<(), sqlx::Error> {
        if position > self.committed {
            DB::save_checkpoint(
                conn,
                &self.shared.tables,
                &self.shared.name,
                self.version,
                i32::try_from(self.index).unwrap_or(i32::MAX),
                position,
            )
            .await?;
        }
        Ok(())
    }

    pub(super) fn advance(&mut self, position: i64) {
        if position > self.committed {
            self.committed = position;
            self.last_checkpoint_at = Instant::now();
        }
        self.progress.done(self.index, position);
    }

    /// Nothing of this segment's up to `mark`: it is done up to there; store it now and then.
    pub(super) async fn idle_mark(&mut self, mark: i64) {
        self.progress.done(self.index, mark);
        if mark > self.committed && self.last_checkpoint_at.elapsed() >= IDLE_CHECKPOINT_INTERVAL {
            let stored = async {
                let mut tx = self.shared.pool.begin().await?;
                self.save_checkpoint(&mut tx, mark).await?;
                tx.commit().await
            }
            .await;
            match stored {
                Ok(()) => self.advance(mark),
                Err(e) => self.progress.error(&e),
            }
        }
    }
}
