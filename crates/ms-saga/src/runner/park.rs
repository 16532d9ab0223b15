//! Parking: an unknown instance's message under [`UnknownInstance::Park`], an instance whose
//! message failed after its retries, and the messages behind it; [`replay`](SagaRunner::replay)
//! and [`discard`](SagaRunner::discard).

use ms_bus::Envelope;

use super::step::{classify, outbox_failure};
use super::{Handled, SagaRunner, Source, Target, UnknownInstance};
use crate::error::Failure;
use crate::store::{RawInstance, SagaBackend, now_ms, queries};
use crate::{Route, Saga, SagaError, Status};

impl<S: Saga, DB: SagaBackend> SagaRunner<S, DB> {
    /// Handles a non-initiating message of an unknown instance by the policy.
    pub(super) async fn unknown(
        &self,
        conn: &mut DB::Connection,
        target: &Target<'_, S::Message>,
    ) -> Result<(Handled, bool), Failure> {
        let reason = format!("unknown instance {} of saga {}", target.instance, S::NAME);
        match self.inner.unknown {
            UnknownInstance::Discard => Ok((Handled::NoEffect, true)),
            UnknownInstance::DeadLetter => Ok((Handled::Rejected(reason), false)),
            UnknownInstance::Park => {
                let st = self.inner.store.statements();
                park_row::<DB>(conn, st, S::NAME, target.instance, target.envelope, &reason)
                    .await?;
                Ok((Handled::Parked { reason }, true))
            }
        }
    }

    /// Parks `target` and its instance after its retries, in a transaction of its own.
    pub(super) async fn park(
        &self,
        target: &Target<'_, S::Message>,
        source: Source,
        reason: &str,
    ) -> Result<Handled, SagaError> {
        let inner = &*self.inner;
        let mut conflicts = 0;
        loop {
            let mut tx = DB::begin(inner.store.pool()).await?;
            let result = self.park_in(&mut tx, target, source, reason).await;
            match result {
                Ok(handled) => {
                    tx.commit().await?;
                    return Ok(handled);
                }
                Err(failure) => {
                    let _ = tx.rollback().await;
                    match failure {
                        Failure::Conflict if conflicts < inner.max_conflicts => conflicts += 1,
                        Failure::Conflict | Failure::Handle(_) => {
                            return Err(SagaError::Conflict {
                                instance: target.instance.to_owned(),
                                attempts: conflicts,
                            });
                        }
                        Failure::Error(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// The parking transaction's work.
    async fn park_in(
        &self,
        conn: &mut DB::Connection,
        target: &Target<'_, S::Message>,
        source: Source,
        reason: &str,
    ) -> Result<Handled, Failure> {
        let inner = &*self.inner;
        let st = inner.store.statements();
        match source {
            Source::Bus => {
                let first = inner
                    .inbox
                    .record(&mut *conn, &inner.consumer, target.envelope)
                    .await
                    .map_err(outbox_failure::<DB>)?;
                if !first {
                    return Ok(Handled::Duplicate);
                }
            }
            // Already in the parked table, first of its instance: only the reason is new.
            Source::Parked(id) => queries::parked_delete::<DB>(&mut *conn, st, id)
                .await
                .map_err(classify::<DB>)?,
        }
        park_row::<DB>(
            &mut *conn,
            st,
            S::NAME,
            target.instance,
            target.envelope,
            reason,
        )
        .await?;
        let row = queries::load::<DB>(&mut *conn, st, S::NAME, target.instance)
            .await
            .map_err(classify::<DB>)?;
        match row {
            Some(_) => {
                queries::set_status::<DB>(
                    &mut *conn,
                    st,
                    S::NAME,
                    target.instance,
                    Status::Active,
                    Status::Parked,
                )
                .await
                .map_err(classify::<DB>)?;
            }
            None => {
                // A start that fails: the instance exists from now on, parked, so that
                // its later messages wait behind the start.
                let now = now_ms();
                let raw = RawInstance {
                    saga: S::NAME.to_owned(),
                    instance: target.instance.to_owned(),
                    state: serde_json::to_string(&S::State::default()).map_err(|source| {
                        Failure::Error(SagaError::State {
                            instance: target.instance.to_owned(),
                            source,
                        })
                    })?,
                    version: 0,
                    status: Status::Parked.code().to_owned(),
                    timeouts: "{}".to_owned(),
                    created_at: now,
                    updated_at: now,
                    completed_at: None,
                };
                if !queries::insert::<DB>(&mut *conn, st, &raw)
                    .await
                    .map_err(classify::<DB>)?
                {
                    return Err(Failure::Conflict);
                }
            }
        }
        Ok(Handled::Parked {
            reason: reason.to_owned(),
        })
    }

    /// Un-parks `instance`: handles its parked messages in arrival order (after a fix of the
    /// saga, say), each in its own transaction, until none is left (the instance is active
    /// again) or one fails again after its retries (parked again, with the new reason).
    /// Returns how many were handled.
    pub async fn replay(&self, instance: &str) -> Result<u64, SagaError> {
        let inner = &*self.inner;
        let st = inner.store.statements();
        let mut handled = 0;
        loop {
            let mut conn = inner.store.pool().acquire().await?;
            let first = queries::parked_first::<DB>(&mut conn, st, S::NAME, instance).await?;
            drop(conn);
            let Some(parked) = first else {
                // Re-activate, then look again in the same transaction: a message parked
                // behind the instance meanwhile either committed first (seen here: go on
                // replaying) or conflicts with this update (and is then handled afresh).
                let mut tx = DB::begin(inner.store.pool()).await?;
                queries::set_status::<DB>(
                    &mut *tx,
                    st,
                    S::NAME,
                    instance,
                    Status::Parked,
                    Status::Active,
                )
                .await?;
                if queries::parked_first::<DB>(&mut *tx, st, S::NAME, instance)
                    .await?
                    .is_some()
                {
                    tx.rollback().await?;
                    continue;
                }
                tx.commit().await?;
                return Ok(handled);
            };
            let route = inner.saga.route(&parked.envelope);
            let (message, starts) = match route {
                Route::Start { message, .. } => (message, true),
                Route::Correlate { message, .. } => (message, false),
                // No longer for this saga: drop it.
                Route::Ignore | Route::Reject(_) => {
                    let mut tx = DB::begin(inner.store.pool()).await?;
                    queries::parked_delete::<DB>(&mut *tx, st, parked.id).await?;
                    tx.commit().await?;
                    continue;
                }
            };
            let target = Target {
                envelope: &parked.envelope,
                instance,
                message: &message,
                starts,
            };
            match self.run(&target, Source::Parked(parked.id)).await? {
                Handled::Parked { .. } => return Ok(handled),
                _ => handled += 1,
            }
        }
    }

    /// Replays the messages parked for `instance` while it was unknown, now that it started.
    /// The start saved the instance parked behind them, so a failure here (or a crash) loses
    /// nothing: later messages wait behind them until a [`replay`](Self::replay).
    pub(super) async fn replay_waiting(&self, instance: &str) {
        let st = self.inner.store.statements();
        let waiting = match self.inner.store.pool().acquire().await {
            Ok(mut conn) => queries::parked_first::<DB>(&mut conn, st, S::NAME, instance).await,
            Err(e) => Err(e),
        };
        let result = match waiting {
            Ok(Some(_)) => self.replay(instance).await.map(drop),
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(error) = result {
            tracing::warn!(saga = S::NAME, instance, error = %error, "replaying the messages that waited for the start failed; the instance stays parked");
        }
    }

    /// Drops the first parked message of `instance` (the one that failed) without handling
    /// it; the others stay parked until [`replay`](Self::replay). Returns whether there was one.
    pub async fn discard(&self, instance: &str) -> Result<bool, SagaError> {
        let inner = &*self.inner;
        let st = inner.store.statements();
        let mut tx = DB::begin(inner.store.pool()).await?;
        let first = queries::parked_first::<DB>(&mut *tx, st, S::NAME, instance).await?;
        if let Some(parked) = &first {
            queries::parked_delete::<DB>(&mut *tx, st, parked.id).await?;
        }
        tx.commit().await?;
        Ok(first.is_some())
    }
}

pub(super) async fn park_row<DB: SagaBackend>(
    conn: &mut DB::Connection,
    st: &crate::store::Statements,
    saga: &str,
    instance: &str,
    envelope: &Envelope,
    reason: &str,
) -> Result<(), Failure> {
    let json = String::from_utf8_lossy(&ms_bus::codec::to_json(envelope)).into_owned();
    queries::park::<DB>(conn, st, saga, instance, json, reason)
        .await
        .map_err(classify::<DB>)
}
