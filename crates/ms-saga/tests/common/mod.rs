//! The saga the tests run: an order that is charged, with a reply timeout.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use ms_bus::Envelope;
use ms_saga::{Decision, HandleError, Route, Saga, timeout_instance};
use serde::{Deserialize, Serialize};

pub const PAYMENTS: &str = "payments";

/// Charges an order; a reply timeout of `reply_within`.
pub struct Order {
    pub reply_within: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    #[default]
    New,
    Charging {
        notes: u32,
    },
    Paid {
        notes: u32,
    },
    TimedOut,
}

pub enum Message {
    Placed,
    Note,
    Paid,
    NoReply,
    Poison,
}

impl Saga for Order {
    const NAME: &'static str = "order";
    type State = State;
    type Message = Message;

    fn route(&self, e: &Envelope) -> Route<Message> {
        match e.ty() {
            "shop.order.placed" => Route::start_by(e.subject(), Message::Placed),
            "shop.order.noted" => Route::correlate_by(e.subject(), Message::Note),
            "payments.paid" => Route::correlate_by(e.subject(), Message::Paid),
            "shop.order.poison" => Route::correlate_by(e.subject(), Message::Poison),
            "order.no-reply" => Route::correlate_by(timeout_instance(e), Message::NoReply),
            _ => Route::Ignore,
        }
    }

    fn handle(&self, state: &State, message: &Message) -> Result<Decision<State>, HandleError> {
        Ok(match (state, message) {
            (State::New, Message::Placed) => Decision::to(State::Charging { notes: 0 })
                .send(PAYMENTS, Envelope::builder("payments.charge", "/shop"))
                .schedule(
                    "no-reply",
                    self.reply_within,
                    Envelope::builder("order.no-reply", "/shop"),
                ),
            (State::Charging { notes }, Message::Note) => {
                Decision::to(State::Charging { notes: notes + 1 })
            }
            (State::Charging { notes }, Message::Paid) => {
                Decision::to(State::Paid { notes: *notes }).complete()
            }
            (State::Charging { .. }, Message::NoReply) => Decision::to(State::TimedOut).complete(),
            (_, Message::Poison) => return Err(HandleError::new("poison message")),
            _ => Decision::ignore(),
        })
    }
}

pub fn event(ty: &str, order: &str) -> Envelope {
    Envelope::builder(ty, "/test")
        .subject(order)
        .build()
        .expect("valid envelope")
}
