//! What `CorrelationIdLayer` logs when it rejects an incoming ID.
//!
//! This is the only test in its binary on purpose: `tracing` caches each callsite's interest
//! process-wide, so a test on another thread that reaches the same callsite while no subscriber
//! is listening can leave it disabled for the thread-local subscriber this test installs (seen
//! once in CI as an empty log). Alone in its process, nothing else races for the callsite.

use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use ms_tracing::correlation::{CorrelationIdLayer, X_CORRELATION_ID};
use tower::{ServiceBuilder, ServiceExt};

/// A `tracing` writer that keeps everything written to it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_rejection_is_logged_with_its_reason_but_without_the_value() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let layer = CorrelationIdLayer::new();
    let echoed = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let service = ServiceBuilder::new()
                .layer(layer.clone())
                .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
            let request = Request::builder()
                .header(X_CORRELATION_ID, &b"INJECTED\tlevel=admin"[..])
                .body(())
                .unwrap();
            let response = service.oneshot(request).await.unwrap();
            response.headers()[X_CORRELATION_ID]
                .to_str()
                .unwrap()
                .to_owned()
        })
    });
    assert_ne!(echoed, "INJECTED\tlevel=admin");
    assert_eq!(layer.rejected(), 1);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("incoming correlation ID rejected"), "{log}");
    assert!(log.contains("forbidden byte at offset 8"), "{log}");
    assert!(!log.contains("INJECTED"), "{log}");
}
