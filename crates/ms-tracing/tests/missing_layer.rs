//! A service that builds its own subscriber without the OpenTelemetry layer gets one clear
//! warning, not silently lost propagation. (Its own test binary: the warning is once per
//! process.)

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use ms_tracing::{ClientTraceLayer, ServerTraceLayer};
use tower::{Service as _, ServiceBuilder, ServiceExt as _};
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_subscriber_without_the_opentelemetry_layer_is_warned_about_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone()),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    let echo = |request: Request<()>| async move {
        Ok::<_, std::convert::Infallible>(Response::new(request.headers().clone()))
    };
    let mut server = ServiceBuilder::new()
        .layer(ServerTraceLayer::new())
        .service_fn(echo);
    let mut client = ServiceBuilder::new()
        .layer(ClientTraceLayer::new())
        .service_fn(echo);
    for _ in 0..2 {
        let request = Request::get("/orders/7")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(())
            .unwrap();
        server.ready().await.unwrap().call(request).await.unwrap();
        let request = Request::get("http://billing/").body(()).unwrap();
        let sent = client.ready().await.unwrap().call(request).await.unwrap();
        assert!(!sent.into_body().into_inner().contains_key("traceparent"));
    }
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text.matches("has no OpenTelemetry layer").count(),
        1,
        "{text}"
    );
    assert!(text.contains("WARN"), "{text}");
}
