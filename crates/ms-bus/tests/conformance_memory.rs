//! The conformance suite against the memory adapter.
#![cfg(all(feature = "memory", feature = "testkit"))]

use futures_util::future::BoxFuture;
use ms_bus::codec::TransportMessage;
use ms_bus::conformance::{Capabilities, Fixture};
use ms_bus::memory::MemoryBus;

struct Memory(MemoryBus);

impl Fixture for Memory {
    type Bus = MemoryBus;

    fn connect(&self) -> BoxFuture<'_, MemoryBus> {
        Box::pin(async { self.0.clone() })
    }

    fn name(&self, name: &str) -> String {
        name.to_owned()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn publish_garbage<'a>(&'a self, topic: &'a str) -> Option<BoxFuture<'a, ()>> {
        Some(Box::pin(async move {
            let garbage = TransportMessage {
                headers: vec![("ce-specversion".into(), "0.1".into())],
                content_type: Some("text/plain".into()),
                body: "not an event".into(),
            };
            self.0.publish_raw(topic, garbage).unwrap();
        }))
    }
}

ms_bus::conformance_tests!(async { Some(Memory(MemoryBus::new())) });
