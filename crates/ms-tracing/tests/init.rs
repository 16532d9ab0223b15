//! Setup from configuration: exporter and head sampler choice, and a built pipeline that
//! records spans.

use ms_tracing::head_sampling::{HeadSampler, InvalidSamplerConfig};
use ms_tracing::init::{InitError, SpanExport, TracingBuilder};
use ms_tracing::testing::TestTracing;

#[test]
fn sampler_variables_follow_the_specification() {
    use HeadSampler::*;
    let cases: [(Option<&str>, Option<&str>, HeadSampler); 10] = [
        (None, None, ParentBasedAlwaysOn),
        (Some(""), Some("0.3"), ParentBasedAlwaysOn),
        (Some("always_on"), None, AlwaysOn),
        (Some("ALWAYS_OFF"), None, AlwaysOff),
        (Some("traceidratio"), Some("0.5"), TraceIdRatio(0.5)),
        (Some("traceidratio"), None, TraceIdRatio(1.0)),
        (Some("traceidratio"), Some(" 0 "), TraceIdRatio(0.0)),
        (Some("parentbased_always_on"), None, ParentBasedAlwaysOn),
        (
            Some("parentbased_always_off"),
            Some("ignored"),
            ParentBasedAlwaysOff,
        ),
        (
            Some("parentbased_traceidratio"),
            Some("1"),
            ParentBasedTraceIdRatio(1.0),
        ),
    ];
    for (sampler, arg, expected) in cases {
        assert_eq!(
            HeadSampler::from_env_values(sampler, arg),
            Ok(expected),
            "{sampler:?} {arg:?}"
        );
    }
    for arg in ["1.01", "-0.1", "half", "NaN"] {
        assert_eq!(
            HeadSampler::from_env_values(Some("traceidratio"), Some(arg)),
            Err(InvalidSamplerConfig::BadRatio(arg.to_owned()))
        );
    }
    assert_eq!(
        HeadSampler::from_env_values(Some("jaeger_remote"), None),
        Err(InvalidSamplerConfig::UnknownSampler(
            "jaeger_remote".to_owned()
        ))
    );
}

#[test]
fn exporter_variable_names_the_exporter() {
    assert!(matches!(
        SpanExport::from_env_value(Some("none")),
        Ok(SpanExport::None)
    ));
    assert!(matches!(
        SpanExport::from_env_value(Some("console")),
        Ok(SpanExport::Stdout)
    ));
    assert!(matches!(
        SpanExport::from_env_value(Some(" Stdout ")),
        Ok(SpanExport::Stdout)
    ));
    assert!(matches!(
        SpanExport::from_env_value(Some("zipkin")),
        Err(InitError::UnknownExporter(name)) if name == "zipkin"
    ));
    #[cfg(feature = "otlp")]
    assert!(matches!(
        SpanExport::from_env_value(None),
        Ok(SpanExport::Otlp { endpoint: None })
    ));
}

#[test]
fn a_bad_filter_is_an_error_not_a_panic() {
    let error = TracingBuilder::new("svc")
        .filter("[[[")
        .build()
        .unwrap_err();
    assert!(matches!(error, InitError::Filter(_)), "{error}");
}

#[test]
fn the_head_sampler_applies() {
    let tracing = TestTracing::with(|b| b.sampler(HeadSampler::AlwaysOff));
    tracing::dispatcher::with_default(tracing.dispatch(), || {
        tracing::info_span!("dropped").in_scope(|| {});
    });
    assert!(tracing.spans().is_empty());
    let tracing = TestTracing::with(|b| b.sampler(HeadSampler::TraceIdRatio(1.0)));
    tracing::dispatcher::with_default(tracing.dispatch(), || {
        tracing::info_span!("kept").in_scope(|| {});
    });
    assert_eq!(tracing.names(), ["kept"]);
}

#[test]
fn tail_sampling_in_the_pipeline_keeps_only_failed_traces() {
    let tracing =
        TestTracing::with_tail_sampling(ms_tracing::tail_sampling::TailSampling::errors_only());
    tracing::dispatcher::with_default(tracing.dispatch(), || {
        tracing::info_span!("fine").in_scope(|| tracing::info_span!("fine child").in_scope(|| {}));
        tracing::info_span!("failed", otel.status_code = "error")
            .in_scope(|| tracing::info_span!("failed child").in_scope(|| {}));
    });
    assert_eq!(tracing.names(), ["failed child", "failed"]);
}

#[test]
fn quiet_logs_do_not_silence_spans_and_the_span_filter_does() {
    let tracing = TestTracing::with(|b| b.filter("off"));
    tracing::dispatcher::with_default(tracing.dispatch(), || {
        tracing::info_span!("still exported").in_scope(|| {});
    });
    assert_eq!(tracing.names(), ["still exported"]);
    let tracing = TestTracing::with(|b| b.span_filter("warn"));
    tracing::dispatcher::with_default(tracing.dispatch(), || {
        tracing::info_span!("filtered").in_scope(|| {});
        tracing::warn_span!("kept").in_scope(|| {});
    });
    assert_eq!(tracing.names(), ["kept"]);
}

#[tokio::test]
async fn a_filtered_out_client_span_still_passes_the_current_context_on() {
    use tower::{Service as _, ServiceBuilder, ServiceExt as _};
    let tracing = TestTracing::with(|b| b.span_filter("info,ms_tracing::client=off"));
    let _guard = tracing.set_default();
    let mut client = ServiceBuilder::new()
        .layer(ms_tracing::ClientTraceLayer::new())
        .service_fn(|request: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(request.headers().clone()))
        });
    let parent = tracing::info_span!("handler");
    let request = http::Request::get("http://x/").body(()).unwrap();
    let sent = tracing::Instrument::instrument(
        async { client.ready().await.unwrap().call(request).await.unwrap() },
        parent.clone(),
    )
    .await
    .into_body()
    .into_inner();
    drop(parent);
    let handler = tracing.span("handler");
    let traceparent = sent["traceparent"].to_str().unwrap();
    assert!(
        traceparent.contains(&handler.span_context.span_id().to_string()),
        "{traceparent}"
    );
    assert_eq!(tracing.names(), ["handler"]);
}

/// A log writer that keeps what is written.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn json_logs_are_one_object_per_event_with_the_spans_fields() {
    let captured = Captured::default();
    let writer = captured.clone();
    let tracing = TracingBuilder::new("svc")
        .exporter(SpanExport::None)
        .json_logs(true)
        .filter("info")
        .log_writer(move || writer.clone())
        .build()
        .unwrap();
    tracing::dispatcher::with_default(tracing.dispatch(), || {
        let span = tracing::info_span!("request", correlation.id = "order-42");
        span.in_scope(|| tracing::info!(items = 3, "order placed"));
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(event["fields"]["message"], "order placed");
    assert_eq!(event["fields"]["items"], 3);
    assert_eq!(event["span"]["correlation.id"], "order-42");
    assert_eq!(event["spans"][0]["name"], "request");
}

/// Runs `init` in a child process (it installs process-wide state) with `env`, and returns
/// what the child printed on stdout.
fn child_stdout(test: &str, env: &[(&str, &str)]) -> String {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("MS_TRACING_INIT_CHILD", "1")
        .env("RUST_LOG", "off")
        .env_remove("OTEL_TRACES_EXPORTER")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_SERVICE_NAME");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn init_with_nothing_set_prints_no_spans_and_console_does() {
    const TEST: &str = "init_with_nothing_set_prints_no_spans_and_console_does";
    if let Some(how) = std::env::var_os("MS_TRACING_INIT_CHILD") {
        // A service sets tracing up inside its runtime (the OTLP exporter needs one).
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let _inside = runtime.enter();
        let guard = if how == "builder" {
            TracingBuilder::new("quiet").install().unwrap()
        } else {
            ms_tracing::init("quiet").unwrap()
        };
        tracing::info_span!("the-span-to-look-for").in_scope(|| {});
        drop(guard);
        return;
    }
    // Unset: `none`, or `otlp` with that feature (to a collector that is not there): neither
    // prints a span.
    let quiet = child_stdout(TEST, &[]);
    assert!(!quiet.contains("the-span-to-look-for"), "{quiet}");
    let quiet = child_stdout(TEST, &[("OTEL_TRACES_EXPORTER", "none")]);
    assert!(!quiet.contains("the-span-to-look-for"), "{quiet}");
    // The builder's own default, whatever the environment says, is no exporter.
    let quiet = child_stdout(
        TEST,
        &[
            ("MS_TRACING_INIT_CHILD", "builder"),
            ("OTEL_TRACES_EXPORTER", "console"),
        ],
    );
    assert!(!quiet.contains("the-span-to-look-for"), "{quiet}");
    // On request, printed, and with no source paths of the build machine.
    let console = child_stdout(TEST, &[("OTEL_TRACES_EXPORTER", "console")]);
    assert!(console.contains("the-span-to-look-for"), "{console}");
    assert!(!console.contains("code.file.path"), "{console}");
    let disabled = child_stdout(
        TEST,
        &[
            ("OTEL_TRACES_EXPORTER", "console"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    );
    assert!(!disabled.contains("the-span-to-look-for"), "{disabled}");
    let named = child_stdout(
        TEST,
        &[
            ("OTEL_TRACES_EXPORTER", "console"),
            ("OTEL_SERVICE_NAME", "billing"),
        ],
    );
    assert!(named.contains("billing"), "{named}");
}

#[test]
fn without_the_otlp_feature_the_default_exporter_is_none() {
    #[cfg(not(feature = "otlp"))]
    assert!(matches!(
        SpanExport::from_env_value(None),
        Ok(SpanExport::None)
    ));
    #[cfg(not(feature = "otlp"))]
    assert!(matches!(
        SpanExport::from_env_value(Some("")),
        Ok(SpanExport::None)
    ));
    assert!(TracingBuilder::new("svc").from_env().is_ok());
}

#[test]
fn code_locations_are_left_out_unless_asked_for() {
    let tracing = TestTracing::new();
    tracing::dispatcher::with_default(tracing.dispatch(), || {
        tracing::info_span!("plain").in_scope(|| {});
    });
    let span = tracing.span("plain");
    assert_eq!(TestTracing::attribute(&span, "code.file.path"), None);
    let tracing = TestTracing::with(|b| b.code_location(true));
    tracing::dispatcher::with_default(tracing.dispatch(), || {
        tracing::info_span!("located").in_scope(|| {});
    });
    let span = tracing.span("located");
    assert!(TestTracing::attribute(&span, "code.file.path").is_some());
}
