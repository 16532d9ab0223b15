//! The rows the store reads, decoded from the database-neutral [`Value`]s the backends
//! return.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use super::backend::{Arg, Kind, Value};
use super::{Instance, ParkedMessage, Status, from_ms};
use crate::SagaError;

/// One instance row as stored.
#[derive(Debug, Clone)]
pub(crate) struct RawInstance {
    pub(crate) saga: String,
    pub(crate) instance: String,
    pub(crate) state: String,
    pub(crate) version: i64,
    pub(crate) status: String,
    pub(crate) timeouts: String,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) completed_at: Option<i64>,
}

impl RawInstance {
    /// The columns of the statements that read instances, in their order.
    pub(crate) const KINDS: [Kind; 9] = [
        Kind::Text,
        Kind::Text,
        Kind::Text,
        Kind::Int,
        Kind::Text,
        Kind::Text,
        Kind::Int,
        Kind::Int,
        Kind::MaybeInt,
    ];

    /// The columns in [`KINDS`](Self::KINDS)' order, to bind.
    pub(crate) fn columns(&self) -> [Arg<'_>; 9] {
        [
            Arg::Text(&self.saga),
            Arg::Text(&self.instance),
            Arg::Text(&self.state),
            Arg::Int(self.version),
            Arg::Text(&self.status),
            Arg::Text(&self.timeouts),
            Arg::Int(self.created_at),
            Arg::Int(self.updated_at),
            Arg::MaybeInt(self.completed_at),
        ]
    }

    /// The row read with [`KINDS`](Self::KINDS).
    pub(crate) fn from_values(values: Vec<Value>) -> Result<Self, sqlx::Error> {
        use Value::{Int, MaybeInt, Text};
        match <[Value; 9]>::try_from(values) {
            Ok(
                [
                    Text(saga),
                    Text(instance),
                    Text(state),
                    Int(version),
                    Text(status),
                    Text(timeouts),
                    Int(created_at),
                    Int(updated_at),
                    MaybeInt(completed_at),
                ],
            ) => Ok(Self {
                saga,
                instance,
                state,
                version,
                status,
                timeouts,
                created_at,
                updated_at,
                completed_at,
            }),
            _ => Err(shape("instance")),
        }
    }

    pub(crate) fn status(&self) -> Status {
        // An unknown code (a newer version's) is treated as parked: nothing runs on it.
        Status::parse(&self.status).unwrap_or(Status::Parked)
    }

    pub(crate) fn timeouts(&self) -> Result<BTreeMap<String, String>, SagaError> {
        serde_json::from_str(&self.timeouts).map_err(|source| SagaError::State {
            instance: self.instance.clone(),
            source,
        })
    }

    pub(crate) fn decode<S: DeserializeOwned>(self) -> Result<Instance<S>, SagaError> {
        let state = serde_json::from_str(&self.state).map_err(|source| SagaError::State {
            instance: self.instance.clone(),
            source,
        })?;
        Ok(Instance {
            state,
            version: self.version.cast_unsigned(),
            status: self.status(),
            timeouts: self.timeouts()?.into_iter().collect(),
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
            completed_at: self.completed_at.map(from_ms),
            id: self.instance,
        })
    }
}

/// The columns of the statements that read parked messages: id, instance, envelope (JSON),
/// reason, parked at.
pub(crate) const PARKED_KINDS: [Kind; 5] =
    [Kind::Int, Kind::Text, Kind::Text, Kind::Text, Kind::Int];

/// The parked message read with [`PARKED_KINDS`].
pub(crate) fn parked_message(values: Vec<Value>) -> Result<ParkedMessage, sqlx::Error> {
    use Value::{Int, Text};
    let Ok(
        [
            Int(id),
            Text(instance),
            Text(envelope),
            Text(reason),
            Int(parked_at),
        ],
    ) = <[Value; 5]>::try_from(values)
    else {
        return Err(shape("parked message"));
    };
    let envelope = ms_bus::codec::from_json(envelope.as_bytes())
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(ParkedMessage {
        id,
        instance,
        envelope,
        reason,
        parked_at: from_ms(parked_at),
    })
}

/// A row that does not have the columns its statement reads (cannot happen: the backends
/// read each column as its kind says).
fn shape(what: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("a {what} row of an unexpected shape"))
}
