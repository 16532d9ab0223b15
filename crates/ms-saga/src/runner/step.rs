//! One attempt at one message: the transaction that records, loads, decides and saves.

use std::collections::BTreeMap;

use ms_outbox::OutboxError;

use super::park::park_row;
use super::{Handled, SagaRunner, Source, Target};
use crate::error::Failure;
use crate::saga::{INSTANCE_EXTENSION, TIMEOUT_EXTENSION};
use crate::store::{RawInstance, SagaBackend, now_ms, queries};
use crate::{Saga, SagaError, Status};

impl<S: Saga, DB: SagaBackend> SagaRunner<S, DB> {
    /// One try in one transaction.
    pub(super) async fn attempt(
        &self,
        target: &Target<'_, S::Message>,
        source: Source,
    ) -> Result<Handled, Failure> {
        let mut tx = DB::begin(self.inner.store.pool())
            .await
            .map_err(classify::<DB>)?;
        match self.write(&mut tx, target, source).await {
            Ok((handled, true)) => {
                tx.commit().await.map_err(classify::<DB>)?;
                Ok(handled)
            }
            Ok((handled, false)) => {
                tx.rollback().await.map_err(classify::<DB>)?;
                Ok(handled)
            }
            Err(failure) => {
                if let Err(e) = tx.rollback().await {
                    tracing::debug!(saga = S::NAME, error = %e, "rollback failed");
                }
                Err(failure)
            }
        }
    }

    /// Everything of one attempt; `true` when it is to be committed.
    async fn write(
        &self,
        conn: &mut DB::Connection,
        target: &Target<'_, S::Message>,
        source: Source,
    ) -> Result<(Handled, bool), Failure> {
        let inner = &*self.inner;
        let st = inner.store.statements();
        let (envelope, instance) = (target.envelope, target.instance);
        match source {
            Source::Bus => {
                let first = inner
                    .inbox
                    .record(&mut *conn, &inner.consumer, envelope)
                    .await
                    .map_err(outbox_failure::<DB>)?;
                if !first {
                    return Ok((Handled::Duplicate, false));
                }
            }
            Source::Parked(id) => queries::parked_delete::<DB>(&mut *conn, st, id)
                .await
                .map_err(classify::<DB>)?,
        }
        let row = queries::load::<DB>(&mut *conn, st, S::NAME, instance)
            .await
            .map_err(classify::<DB>)?;
        match &row {
            None if !target.starts => return self.unknown(conn, target).await,
            Some(row) if row.status() == Status::Completed => return Ok((Handled::NoEffect, true)),
            Some(row) if row.status() == Status::Parked && matches!(source, Source::Bus) => {
                return self.park_behind(conn, instance, envelope).await;
            }
            _ => {}
        }
        let (state, version, mut timeouts, created_at) = match &row {
            Some(row) => {
                let state: S::State = serde_json::from_str(&row.state).map_err(|source| {
                    Failure::Error(SagaError::State {
                        instance: instance.to_owned(),
                        source,
                    })
                })?;
                (state, row.version, row.timeouts()?, row.created_at)
            }
            None => (S::State::default(), 0, BTreeMap::new(), now_ms()),
        };
        // A timeout counts only while it is the pending one of its name: one that fired after
        // it was cancelled or replaced (its cancel came too late) has no effect.
        if let Some(name) = envelope.extension(TIMEOUT_EXTENSION)
            && envelope.extension(INSTANCE_EXTENSION) == Some(instance)
        {
            if timeouts.get(name).map(String::as_str) != Some(envelope.id()) {
                return Ok((Handled::NoEffect, true));
            }
            timeouts.remove(name);
        }
        let decision = inner
            .saga
            .handle(&state, target.message)
            .map_err(Failure::Handle)?;
        if decision.is_ignore() {
            return Ok((Handled::NoEffect, true));
        }
        let new_version = version + 1;
        let completed = decision.is_complete();
        let messages = self
            .apply(conn, instance, new_version, &mut timeouts, &decision)
            .await?;
        // The instance stays parked while messages wait: during a replay, and from a start
        // that finds messages parked for it while it was unknown (`UnknownInstance::Park`):
        // the runner replays those right after this commits, and until then later messages
        // wait behind them, so that they are handled in arrival order.
        let waiting = self.waiting(conn, instance, source, row.is_none()).await?;
        let status = if completed {
            Status::Completed
        } else if waiting {
            Status::Parked
        } else {
            Status::Active
        };
        let next = decision.state.as_ref().unwrap_or(&state);
        let raw = encode::<S>(instance, next, new_version, status, &timeouts, created_at)?;
        let saved = if row.is_some() {
            queries::update::<DB>(&mut *conn, st, &raw, version).await
        } else {
            queries::insert::<DB>(&mut *conn, st, &raw).await
        }
        .map_err(classify::<DB>)?;
        if !saved {
            return Err(Failure::Conflict);
        }
        inner
            .outbox
            .enqueue_all(&mut *conn, messages)
            .await
            .map_err(outbox_failure::<DB>)?;
        let handled = Handled::Applied {
            instance: instance.to_owned(),
            version: new_version.cast_unsigned(),
            completed,
        };
        Ok((handled, true))
    }

    /// Whether messages wait for the instance (a replay, or a start that finds messages
    /// parked for it while it was unknown).
    async fn waiting(
        &self,
        conn: &mut DB::Connection,
        instance: &str,
        source: Source,
        new: bool,
    ) -> Result<bool, Failure> {
        let st = self.inner.store.statements();
        Ok(match source {
            Source::Parked(_) => true,
            Source::Bus if new => queries::parked_first::<DB>(conn, st, S::NAME, instance)
                .await
                .map_err(classify::<DB>)?
                .is_some(),
            Source::Bus => false,
        })
    }

    /// Parks a message behind its parked instance.
    async fn park_behind(
        &self,
        conn: &mut DB::Connection,
        instance: &str,
        envelope: &ms_bus::Envelope,
    ) -> Result<(Handled, bool), Failure> {
        let st = self.inner.store.statements();
        let reason = "waiting behind a parked message of the instance";
        park_row::<DB>(conn, st, S::NAME, instance, envelope, reason).await?;
        // Touch the row, so that a replay re-activating the instance at the same time
        // conflicts with this (one of the two runs again) instead of leaving this
        // message parked behind an active instance.
        let touched = queries::set_status::<DB>(
            &mut *conn,
            st,
            S::NAME,
            instance,
            Status::Parked,
            Status::Parked,
        )
        .await
        .map_err(classify::<DB>)?;
        if !touched {
            return Err(Failure::Conflict);
        }
        Ok((
            Handled::Parked {
                reason: reason.to_owned(),
            },
            true,
        ))
    }
}

/// The row that stores `state` after a step.
fn encode<S: Saga>(
    instance: &str,
    state: &S::State,
    version: i64,
    status: Status,
    timeouts: &BTreeMap<String, String>,
    created_at: i64,
) -> Result<RawInstance, Failure> {
    let invalid = |source| {
        Failure::Error(SagaError::State {
            instance: instance.to_owned(),
            source,
        })
    };
    let now = now_ms();
    Ok(RawInstance {
        saga: S::NAME.to_owned(),
        instance: instance.to_owned(),
        state: serde_json::to_string(state).map_err(invalid)?,
        version,
        status: status.code().to_owned(),
        timeouts: serde_json::to_string(timeouts).map_err(invalid)?,
        created_at,
        updated_at: now,
        completed_at: (status == Status::Completed).then_some(now),
    })
}

/// Sorts a database error into "retry" and "give up".
pub(super) fn classify<DB: SagaBackend>(error: sqlx::Error) -> Failure {
    match &error {
        sqlx::Error::Database(db) if DB::is_transient(db.as_ref()) => Failure::Conflict,
        _ => Failure::Error(error.into()),
    }
}

pub(super) fn outbox_failure<DB: SagaBackend>(error: OutboxError) -> Failure {
    match error {
        OutboxError::Database(e) => classify::<DB>(e),
        e => Failure::Error(e.into()),
    }
}
