//! One call's RED metrics (rate, errors, duration) as the trace layers record them: a
//! histogram named and labelled by OpenTelemetry's semantic conventions, recorded once when the
//! call ends (its response body sent or dropped). Without the `metrics` feature this is a
//! no-op that the layers never build.

#[cfg(feature = "metrics")]
pub(crate) use enabled::CallMetrics;

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::CallMetrics;

#[cfg(feature = "metrics")]
mod enabled {
    use std::time::Instant;

    use http::{Method, Request, Version};
    use metrics::Label;

    use crate::histogram_cache::HistogramCache;
    use crate::metrics::{
        HTTP_CLIENT_REQUEST_DURATION, HTTP_SERVER_REQUEST_DURATION, RPC_CLIENT_DURATION,
        RPC_SERVER_DURATION,
    };

    /// The histogram of one call, recorded on drop.
    #[derive(Debug)]
    pub(crate) struct CallMetrics {
        name: &'static str,
        /// `rpc.*.duration` is in milliseconds, `http.*.request.duration` in seconds.
        millis: bool,
        start: Instant,
        labels: Vec<Label>,
        error_type: Option<&'static str>,
        head_received: bool,
        /// The layer's handles, where the histogram of this call's labels is recorded.
        handles: HistogramCache,
    }

    impl CallMetrics {
        fn new(
            name: &'static str,
            millis: bool,
            labels: Vec<Label>,
            handles: &HistogramCache,
        ) -> Self {
            Self {
                name,
                millis,
                start: Instant::now(),
                labels,
                error_type: None,
                head_received: false,
                handles: handles.clone(),
            }
        }

        pub(crate) fn http_server<B>(
            request: &Request<B>,
            route: Option<&str>,
            handles: &HistogramCache,
        ) -> Self {
            let mut labels = Vec::with_capacity(6);
            labels.push(Label::from_static_parts(
                "http.request.method",
                method(request.method()),
            ));
            labels.push(Label::from_static_parts(
                "url.scheme",
                scheme(request.uri().scheme_str()),
            ));
            labels.push(Label::from_static_parts(
                "network.protocol.version",
                version(request.version()),
            ));
            if let Some(route) = route {
                labels.push(Label::new("http.route", route.to_owned()));
            }
            Self::new(HTTP_SERVER_REQUEST_DURATION, false, labels, handles)
        }

        pub(crate) fn http_client<B>(request: &Request<B>, handles: &HistogramCache) -> Self {
            let uri = request.uri();
            let mut labels = Vec::with_capacity(6);
            labels.push(Label::from_static_parts(
                "http.request.method",
                method(request.method()),
            ));
            labels.push(Label::from_static_parts(
                "url.scheme",
                scheme(uri.scheme_str()),
            ));
            server(&mut labels, uri);
            Self::new(HTTP_CLIENT_REQUEST_DURATION, false, labels, handles)
        }

        pub(crate) fn rpc_server(
            service: &str,
            rpc_method: &str,
            handles: &HistogramCache,
        ) -> Self {
            Self::new(RPC_SERVER_DURATION, true, rpc(service, rpc_method), handles)
        }

        pub(crate) fn rpc_client(
            service: &str,
            rpc_method: &str,
            uri: &http::Uri,
            handles: &HistogramCache,
        ) -> Self {
            let mut labels = rpc(service, rpc_method);
            server(&mut labels, uri);
            Self::new(RPC_CLIENT_DURATION, true, labels, handles)
        }

        pub(crate) fn http_status(&mut self, status: u16) {
            self.labels.push(Label::from_static_parts(
                "http.response.status_code",
                super::status_text(status),
            ));
        }

        pub(crate) fn grpc_status(&mut self, code: i32) {
            // The head of a trailers-only response and trailers never both carry one, but a
            // misbehaving peer might: the last word counts.
            self.labels.retain(|l| l.key() != "rpc.grpc.status_code");
            self.labels
                .push(Label::new("rpc.grpc.status_code", code.to_string()));
        }

        pub(crate) fn error(&mut self, error_type: &'static str) {
            self.error_type = Some(error_type);
        }

        pub(crate) fn head_received(&mut self) {
            self.head_received = true;
        }

        pub(crate) fn status_text(status: u16) -> &'static str {
            super::status_text(status)
        }
    }

    impl Drop for CallMetrics {
        fn drop(&mut self) {
            let elapsed = self.start.elapsed();
            let value = if self.millis {
                elapsed.as_secs_f64() * 1_000.0
            } else {
                elapsed.as_secs_f64()
            };
            let mut labels = std::mem::take(&mut self.labels);
            // Dropped before an answer (or an error) came: the caller gave up or went away.
            let error_type = self
                .error_type
                .or((!self.head_received).then_some("cancelled"));
            if let Some(error_type) = error_type {
                labels.push(Label::from_static_parts("error.type", error_type));
            }
            self.handles.record(self.name, labels, value);
        }
    }

    fn rpc(service: &str, rpc_method: &str) -> Vec<Label> {
        let mut labels = Vec::with_capacity(7);
        labels.push(Label::from_static_parts("rpc.system", "grpc"));
        labels.push(Label::new("rpc.service", service.to_owned()));
        labels.push(Label::new("rpc.method", rpc_method.to_owned()));
        labels
    }

    fn server(labels: &mut Vec<Label>, uri: &http::Uri) {
        if let Some(host) = uri.host() {
            labels.push(Label::new("server.address", host.to_owned()));
            let port = uri.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            });
            if let Some(port) = port {
                labels.push(Label::new("server.port", port.to_string()));
            }
        }
    }

    /// Known methods as they are, others as `_OTHER`: a client must not be able to make one
    /// time series per made-up method.
    fn method(method: &Method) -> &'static str {
        match method.as_str() {
            "GET" => "GET",
            "HEAD" => "HEAD",
            "POST" => "POST",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "CONNECT" => "CONNECT",
            "OPTIONS" => "OPTIONS",
            "TRACE" => "TRACE",
            "PATCH" => "PATCH",
            _ => "_OTHER",
        }
    }

    fn scheme(scheme: Option<&str>) -> &'static str {
        match scheme {
            Some("https") => "https",
            _ => "http",
        }
    }

    fn version(version: Version) -> &'static str {
        match version {
            Version::HTTP_09 => "0.9",
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            Version::HTTP_3 => "3",
            _ => "1.1",
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod disabled {
    /// Never built without the `metrics` feature; the methods keep the layers' code one shape.
    #[derive(Debug)]
    pub(crate) enum CallMetrics {}

    impl CallMetrics {
        pub(crate) fn http_status(&mut self, _status: u16) {
            match *self {}
        }
        pub(crate) fn grpc_status(&mut self, _code: i32) {
            match *self {}
        }
        pub(crate) fn error(&mut self, _error_type: &'static str) {
            match *self {}
        }
        pub(crate) fn head_received(&mut self) {
            match *self {}
        }
        pub(crate) fn status_text(status: u16) -> &'static str {
            super::status_text(status)
        }
    }
}

/// A status code as static text, for `error.type` (which semantic conventions set to the
/// status code of a failed HTTP call); codes outside 100..=599 are `_OTHER`.
fn status_text(status: u16) -> &'static str {
    static TEXT: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let text = TEXT.get_or_init(|| (100..600).map(|code: u16| code.to_string()).collect());
    status
        .checked_sub(100)
        .and_then(|index| text.get(usize::from(index)))
        .map_or("_OTHER", String::as_str)
}
