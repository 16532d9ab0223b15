//! `W3cTraceContextPropagator` against the W3C Trace Context recommendation, rule by rule
//! (Level 1 and Level 2 `traceparent`, §3.2 and §4.3; `tracestate`, §3.3), plus property tests
//! over the parsers.

use http::{HeaderMap, HeaderValue};
use ms_tracing::propagation::{
    HeaderExtractor, HeaderInjector, InvalidTraceparent, InvalidTracestate, Traceparent,
    W3cTraceContextPropagator, parse_tracestate, propagator, tracestate_header, tracestate_with,
};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use proptest::prelude::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    map
}

/// The remote parent a request with these headers continues, or `None` for a new trace.
fn extract(pairs: &[(&str, &[u8])]) -> Option<SpanContext> {
    let map = headers(pairs);
    let cx = W3cTraceContextPropagator::new()
        .extract_with_context(&Context::new(), &HeaderExtractor(&map));
    let remote = cx.span().span_context().clone();
    remote.is_valid().then_some(remote)
}

fn parent(value: &str) -> Option<SpanContext> {
    extract(&[("traceparent", value.as_bytes())])
}

fn inject(cx: &SpanContext) -> HeaderMap {
    let mut map = HeaderMap::new();
    let cx = Context::new().with_remote_span_context(cx.clone());
    W3cTraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut map));
    map
}

// ---- traceparent -------------------------------------------------------------------------

#[test]
fn a_valid_version_00_header_is_continued_as_a_remote_parent() {
    let remote = parent(VALID).unwrap();
    assert_eq!(remote.trace_id(), TraceId::from_hex(TRACE_ID).unwrap());
    assert_eq!(remote.span_id(), SpanId::from_hex(PARENT_ID).unwrap());
    assert!(remote.is_remote());
    assert!(remote.is_sampled());
    let not_sampled = parent(&VALID.replace("-01", "-00")).unwrap();
    assert!(!not_sampled.is_sampled());
}

#[test]
fn optional_whitespace_around_the_value_is_ignored() {
    for value in [
        format!(" {VALID}"),
        format!("{VALID}\t"),
        format!(" \t{VALID}  "),
    ] {
        assert!(parent(&value).is_some(), "{value:?}");
    }
}

#[test]
fn version_ff_is_forbidden() {
    let value = VALID.replacen("00", "ff", 1);
    assert_eq!(
        Traceparent::parse(&value),
        Err(InvalidTraceparent::ForbiddenVersion)
    );
    assert!(parent(&value).is_none());
}

#[test]
fn all_zero_ids_are_invalid() {
    let zero_trace = VALID.replace(TRACE_ID, &"0".repeat(32));
    assert_eq!(
        Traceparent::parse(&zero_trace),
        Err(InvalidTraceparent::ZeroTraceId)
    );
    let zero_parent = VALID.replace(PARENT_ID, &"0".repeat(16));
    assert_eq!(
        Traceparent::parse(&zero_parent),
        Err(InvalidTraceparent::ZeroParentId)
    );
    assert!(parent(&zero_trace).is_none() && parent(&zero_parent).is_none());
}

#[test]
fn uppercase_hex_is_invalid_in_every_field() {
    for value in [
        "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        VALID.replace(TRACE_ID, &TRACE_ID.to_uppercase()),
        VALID.replace(PARENT_ID, &PARENT_ID.to_uppercase()),
        VALID.replace("-01", "-0A"),
    ] {
        assert!(
            matches!(
                Traceparent::parse(&value),
                Err(InvalidTraceparent::BadField { .. })
            ),
            "{value}"
        );
        assert!(parent(&value).is_none(), "{value}");
    }
}

#[test]
fn every_field_must_have_its_exact_length() {
    for value in [
        "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version 1 digit
        "000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version 3 digits
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", // trace-id 31
        "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01", // trace-id 33
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", // parent-id 15
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b77-01", // parent-id 17
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", // flags 1
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011", // flags 3
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",   // no flags
        "",
        "   ",
    ] {
        assert!(Traceparent::parse(value).is_err(), "{value}");
        assert!(parent(value).is_none(), "{value}");
    }
}

#[test]
fn separators_must_be_dashes_and_digits_hex() {
    for value in [
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736.00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
    ] {
        assert!(parent(value).is_none(), "{value}");
    }
}

#[test]
fn version_00_allows_nothing_after_the_flags() {
    for suffix in ["-", "-what-the-future-will-not-be-like", "0", " x"] {
        let value = format!("{VALID}{suffix}");
        assert!(Traceparent::parse(&value).is_err(), "{value}");
    }
}

#[test]
fn a_future_version_is_read_as_version_00_on_its_first_55_characters() {
    // §4.3: a higher version is parsed by the version 00 rules; after the flags comes the end
    // of the value or a dash and fields this version does not know.
    let future = VALID.replacen("00", "cc", 1);
    assert!(parent(&future).is_some());
    let longer = format!("{future}-what-the-future-will-be-like");
    let remote = parent(&longer).unwrap();
    assert_eq!(remote.trace_id(), TraceId::from_hex(TRACE_ID).unwrap());
    assert!(parent(&format!("{future}.what-the-future-will-be-like")).is_none());
    // Its flags are read, unknown bits cleared; re-propagated, it is version 00.
    let odd_flags = longer.replace("-01-", "-09-");
    let remote = parent(&odd_flags).unwrap();
    assert_eq!(remote.trace_flags(), TraceFlags::SAMPLED);
    assert_eq!(inject(&remote)["traceparent"], VALID);
    // A future version still has to be well formed where version 00 is.
    assert!(parent(&future.replace(TRACE_ID, &"0".repeat(32))).is_none());
    assert!(parent(&future[..54]).is_none());
}

#[test]
fn level_2_random_flag_survives_and_unknown_flags_are_cleared() {
    for (flags, kept) in [
        ("02", 0x02),
        ("03", 0x03),
        ("ff", 0x03),
        ("fc", 0x00),
        ("05", 0x01),
    ] {
        let remote = parent(&VALID.replace("-01", &format!("-{flags}"))).unwrap();
        assert_eq!(remote.trace_flags().to_u8(), kept, "{flags}");
        let out = inject(&remote);
        assert_eq!(
            out["traceparent"],
            VALID.replace("-01", &format!("-{kept:02x}"))
        );
    }
}

#[test]
fn a_repeated_traceparent_starts_a_new_trace() {
    let other = VALID.replace(PARENT_ID, "b7ad6b7169203331");
    assert!(
        extract(&[
            ("traceparent", VALID.as_bytes()),
            ("traceparent", other.as_bytes())
        ])
        .is_none()
    );
    // Even two identical copies: the header is single-valued.
    assert!(
        extract(&[
            ("traceparent", VALID.as_bytes()),
            ("traceparent", VALID.as_bytes())
        ])
        .is_none()
    );
}

#[test]
fn non_ascii_bytes_make_the_header_invalid() {
    let mut bytes = VALID.as_bytes().to_vec();
    bytes[10] = 0xe9;
    assert!(extract(&[("traceparent", &bytes)]).is_none());
}

#[test]
fn without_a_valid_traceparent_the_tracestate_is_ignored_and_nothing_is_injected() {
    assert!(extract(&[("tracestate", b"congo=t61rcWkgMzE")]).is_none());
    let mut map = HeaderMap::new();
    W3cTraceContextPropagator::new().inject_context(&Context::new(), &mut HeaderInjector(&mut map));
    assert!(map.is_empty());
}

#[test]
fn an_invalid_traceparent_leaves_the_callers_context_as_it_was() {
    let map = headers(&[("traceparent", b"garbage")]);
    let cx = Context::new().with_value(7_u32);
    let out = W3cTraceContextPropagator::new().extract_with_context(&cx, &HeaderExtractor(&map));
    assert_eq!(out.get::<u32>(), Some(&7));
    assert!(!out.span().span_context().is_valid());
}

// ---- tracestate --------------------------------------------------------------------------

fn state(pairs: &[(&str, &[u8])]) -> TraceState {
    let mut all = vec![("traceparent", VALID.as_bytes())];
    all.extend_from_slice(pairs);
    extract(&all)
        .expect("traceparent is valid")
        .trace_state()
        .clone()
}

fn members(n: usize) -> String {
    (0..n)
        .map(|i| format!("k{i}=v{i}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn tracestate_headers_are_combined_in_order() {
    let s = state(&[
        ("tracestate", b"rojo=00f067aa0ba902b7"),
        ("tracestate", b"congo=t61rcWkgMzE"),
    ]);
    assert_eq!(s.header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
}

#[test]
fn empty_members_and_whitespace_are_allowed() {
    let s = state(&[("tracestate", b" a=1 , ,\tb=2 ,,"), ("tracestate", b"")]);
    assert_eq!(s.header(), "a=1,b=2");
}

#[test]
fn thirty_two_members_are_kept_and_thirty_three_discarded_with_the_traceparent_kept() {
    assert_eq!(
        state(&[("tracestate", members(32).as_bytes())]).header(),
        members(32)
    );
    assert_eq!(
        parse_tracestate([members(33).as_str()]),
        Err(InvalidTracestate::TooManyMembers { count: 33 })
    );
    assert_eq!(
        state(&[("tracestate", members(33).as_bytes())]).header(),
        ""
    );
    // The limit applies to the combined list.
    let (left, right) = (members(20), members(33).split_off(members(20).len() + 1));
    assert_eq!(
        state(&[
            ("tracestate", left.as_bytes()),
            ("tracestate", right.as_bytes())
        ])
        .header(),
        ""
    );
}

#[test]
fn keys_follow_the_level_2_grammar() {
    // key = ( lcalpha / DIGIT ) 0*255 ( keychar ), keychar includes "@".
    let key_ok = |key: &str| parse_tracestate([format!("{key}=v").as_str()]).is_ok();
    assert!(key_ok("a"));
    assert!(key_ok("1abc")); // a digit may come first
    assert!(key_ok("rojo_-*/9@"));
    assert!(key_ok(&format!("a{}", "b".repeat(255)))); // 256
    assert!(!key_ok(&format!("a{}", "b".repeat(256)))); // 257
    assert!(!key_ok("Rojo")); // uppercase
    assert!(!key_ok("ro.jo"));
    assert!(!key_ok("ro jo"));
    assert!(!key_ok(""));
    assert!(!key_ok("@vendor")); // "@" is a keychar, not a first character
    assert!(!key_ok("_vendor"));
    // Level 1's tenant@system split and its limits are gone; each of these is one valid key,
    // although opentelemetry's TraceState (still on Level 1's rule) cannot hold most of them.
    for key in [
        "tenant@".to_owned(),
        "tenant@1vendor".to_owned(),
        format!("t{}@s", "x".repeat(241)), // tenant of 242
    ] {
        assert!(key_ok(&key), "{key}");
    }
    for key in [
        "a@b@c".to_owned(),
        "foo@@bar".to_owned(),
        format!("t@{}", "s".repeat(15)), // system of 15
    ] {
        assert_eq!(
            parse_tracestate([format!("{key}=v").as_str()]),
            Err(InvalidTracestate::NotRepresentable),
            "{key}"
        );
    }
}

#[test]
fn values_follow_the_grammar() {
    let value_ok = |value: &str| parse_tracestate([format!("k={value}").as_str()]).is_ok();
    assert!(value_ok("t61rcWkgMzE"));
    assert!(value_ok("with inner space"));
    assert!(value_ok(&"v".repeat(256)));
    assert!(!value_ok(&"v".repeat(257)));
    assert!(!value_ok(""));
    assert!(!value_ok("a=b"));
    assert!(!value_ok("tab\there"));
    assert!(!value_ok("caf\u{e9}"));
    assert!(!value_ok("bell\u{7}"));
    assert!(!value_ok("del\u{7f}"));
}

#[test]
fn a_tracestate_header_with_non_ascii_bytes_discards_the_tracestate() {
    let s = state(&[("tracestate", b"rojo=1"), ("tracestate", b"congo=caf\xe9")]);
    assert_eq!(s.header(), "");
}

#[test]
fn malformed_members_discard_the_whole_tracestate() {
    for bad in ["a=1,novalue", "a=1,=v", "a=1,B=2", "a=1,b=2=3"] {
        assert!(parse_tracestate([bad]).is_err(), "{bad}");
        assert_eq!(
            state(&[("tracestate", bad.as_bytes())]).header(),
            "",
            "{bad}"
        );
    }
    assert_eq!(
        parse_tracestate(["a=1,b=2,C=3"]),
        Err(InvalidTracestate::MalformedMember { index: 2 })
    );
}

#[test]
fn a_repeated_key_keeps_its_first_value_across_headers() {
    // §3.5: vendors MAY discard duplicate keys they did not generate; the rest is kept.
    assert_eq!(
        parse_tracestate(["a=1,b=2,a=3"]).unwrap().header(),
        "a=1,b=2"
    );
    assert_eq!(
        state(&[("tracestate", b"a=1"), ("tracestate", b"a=2,c=3")]).header(),
        "a=1,c=3"
    );
    // The limit counts the members that were sent, repeats included.
    let thirty_three = format!("{},a1=x", members(32));
    assert!(matches!(
        parse_tracestate([thirty_three.as_str()]),
        Err(InvalidTracestate::TooManyMembers { count: 33 })
    ));
}

#[test]
fn mutation_moves_the_updated_key_to_the_left() {
    let s = parse_tracestate(["a=1,b=2,c=3"]).unwrap();
    assert_eq!(
        tracestate_with(&s, "c", "9").unwrap().header(),
        "c=9,a=1,b=2"
    );
    assert_eq!(
        tracestate_with(&s, "new", "x").unwrap().header(),
        "new=x,a=1,b=2,c=3"
    );
    assert!(tracestate_with(&s, "Bad", "x").is_err());
    assert!(tracestate_with(&s, "ok", "a=b").is_err());
    // A 33rd member pushes the right-most one out.
    let full = parse_tracestate([members(32).as_str()]).unwrap();
    let grown = tracestate_with(&full, "new", "x").unwrap();
    assert_eq!(grown.into_iter().count(), 32);
    assert_eq!(grown.get("new"), Some("x"));
    assert_eq!(grown.get("k31"), None);
    assert_eq!(grown.get("k30"), Some("v30"));
}

#[test]
fn over_512_characters_large_members_go_first_then_from_the_right() {
    // 20 members of 20 characters (419 with commas), then two of 150 between them.
    let small: Vec<String> = (0..20)
        .map(|i| format!("k{i:02}={}", "v".repeat(16)))
        .collect();
    let big_a = format!("biga={}", "a".repeat(145));
    let big_b = format!("bigb={}", "b".repeat(145));
    let mut all = small.clone();
    all.insert(3, big_a.clone());
    all.insert(10, big_b);
    let s = parse_tracestate([all.join(",").as_str()]).unwrap();
    // 419 + 2 * 151 = 721 > 512: removing the right-most large member leaves 570, still over;
    // removing the other large one leaves 419.
    let header = tracestate_header(&s);
    assert_eq!(header, small.join(","));
    // With only small members, members go from the right until it fits.
    let small: Vec<String> = (0..30)
        .map(|i| format!("k{i:02}={}", "v".repeat(16)))
        .collect();
    let s = parse_tracestate([small.join(",").as_str()]).unwrap();
    let header = tracestate_header(&s);
    assert!(header.len() <= 512, "{}", header.len());
    assert_eq!(header, small[..24].join(","));
    // Under the limit nothing changes, and large members are kept.
    let s = parse_tracestate([format!("{big_a},x=1").as_str()]).unwrap();
    assert_eq!(tracestate_header(&s), format!("{big_a},x=1"));
}

#[test]
fn baggage_travels_with_the_composite_propagator() {
    let map = headers(&[
        ("traceparent", VALID.as_bytes()),
        ("baggage", b"tenant=acme,user=42"),
    ]);
    let cx = propagator().extract_with_context(&Context::new(), &HeaderExtractor(&map));
    let mut out = HeaderMap::new();
    propagator().inject_context(&cx, &mut HeaderInjector(&mut out));
    assert_eq!(out["traceparent"], VALID);
    let mut baggage: Vec<&str> = out["baggage"].to_str().unwrap().split(',').collect();
    baggage.sort_unstable();
    assert_eq!(baggage, ["tenant=acme", "user=42"]);
}

// ---- properties --------------------------------------------------------------------------

proptest! {
    #[test]
    fn parsers_never_panic_on_arbitrary_text(text in ".{0,120}") {
        let _ = Traceparent::parse(&text);
        let _ = parse_tracestate([text.as_str()]);
    }

    #[test]
    fn extraction_never_panics_on_arbitrary_header_bytes(
        parents in proptest::collection::vec(proptest::collection::vec(0x20u8..0x7f, 0..80), 0..3),
        states in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..3),
    ) {
        let mut map = HeaderMap::new();
        for value in parents.iter().filter_map(|v| HeaderValue::from_bytes(v).ok()) {
            map.append("traceparent", value);
        }
        for value in states.iter().filter_map(|v| HeaderValue::from_bytes(v).ok()) {
            map.append("tracestate", value);
        }
        let cx = propagator().extract_with_context(&Context::new(), &HeaderExtractor(&map));
        let mut out = HeaderMap::new();
        propagator().inject_context(&cx, &mut HeaderInjector(&mut out));
        // Whatever came in, what goes out is either nothing or a valid version 00 header.
        if let Some(value) = out.get("traceparent") {
            let value = value.to_str().unwrap();
            prop_assert!(value.starts_with("00-"));
            prop_assert!(Traceparent::parse(value).is_ok());
        }
    }

    #[test]
    fn traceparent_round_trips(trace in 1u128.., span in 1u64.., flags in any::<u8>()) {
        let parsed = Traceparent {
            trace_id: TraceId::from(trace),
            parent_id: SpanId::from(span),
            flags: TraceFlags::new(flags),
        };
        let again = Traceparent::parse(&parsed.to_header()).unwrap();
        prop_assert_eq!(again.trace_id, parsed.trace_id);
        prop_assert_eq!(again.parent_id, parsed.parent_id);
        prop_assert_eq!(again.flags.to_u8(), flags & 0x03);
    }

    #[test]
    fn tracestate_round_trips(
        members in proptest::collection::btree_map(
            "[a-z][a-z0-9_*/-]{0,20}(@[a-z][a-z0-9]{0,5})?",
            "[!-+\\--<>-~]([ !-+\\--<>-~]{0,30}[!-+\\--<>-~])?",
            0..=32,
        )
    ) {
        let header = members.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let parsed = parse_tracestate([header.as_str()]).unwrap();
        prop_assert_eq!(parsed.into_iter().count(), members.len());
        if header.len() <= 512 {
            prop_assert_eq!(tracestate_header(&parsed), header);
        } else {
            let shortened = tracestate_header(&parsed);
            prop_assert!(shortened.len() <= 512);
            prop_assert!(parse_tracestate([shortened.as_str()]).is_ok());
        }
    }
}

// ---- what opentelemetry's TraceState cannot hold ----------------------------------------

/// Extracts, then injects from a child span of the extracted context, as a service would.
fn forwarded(pairs: &[(&str, &[u8])]) -> HeaderMap {
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    let map = headers(pairs);
    let cx = propagator().extract_with_context(&Context::new(), &HeaderExtractor(&map));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer("test");
    let child = tracer.start_with_context("child", &cx);
    let cx = cx.with_span(child);
    let mut out = HeaderMap::new();
    propagator().inject_context(&cx, &mut HeaderInjector(&mut out));
    out
}

#[test]
fn a_tracestate_opentelemetry_cannot_hold_goes_on_with_its_own_trace_only() {
    let long = format!("{}@v=1", "t".repeat(242));
    let out = forwarded(&[
        ("traceparent", VALID.as_bytes()),
        ("tracestate", b"foo=1"),
        ("tracestate", long.as_bytes()),
    ]);
    assert_eq!(out["tracestate"], format!("foo=1,{long}").as_str());
    // Not for a different trace: the kept value belongs to the trace it came with.
    let remote = parent(VALID).unwrap();
    let other = SpanContext::new(
        TraceId::from(42_u128),
        remote.span_id(),
        remote.trace_flags(),
        true,
        TraceState::default(),
    );
    let map = headers(&[
        ("traceparent", VALID.as_bytes()),
        ("tracestate", long.as_bytes()),
    ]);
    let cx = propagator()
        .extract_with_context(&Context::new(), &HeaderExtractor(&map))
        .with_remote_span_context(other);
    let mut out = HeaderMap::new();
    propagator().inject_context(&cx, &mut HeaderInjector(&mut out));
    assert!(!out.contains_key("tracestate"));
}

#[test]
fn the_received_random_flag_goes_out_for_the_same_trace_whatever_the_span_context_says() {
    // The SDK gives a span it drops empty flags; what was received decides, both ways.
    for (received, sent) in [("02", "02"), ("03", "02"), ("00", "00"), ("01", "00")] {
        let map = headers(&[(
            "traceparent",
            VALID.replace("-01", &format!("-{received}")).as_bytes(),
        )]);
        let cx = propagator().extract_with_context(&Context::new(), &HeaderExtractor(&map));
        let remote = cx.span().span_context().clone();
        let dropped = SpanContext::new(
            remote.trace_id(),
            SpanId::from(7_u64),
            TraceFlags::new(if received == "00" { 0x02 } else { 0 }),
            false,
            TraceState::default(),
        );
        let mut out = HeaderMap::new();
        propagator().inject_context(
            &cx.with_remote_span_context(dropped),
            &mut HeaderInjector(&mut out),
        );
        assert_eq!(
            out["traceparent"],
            format!("00-{TRACE_ID}-0000000000000007-{sent}").as_str(),
            "received {received}"
        );
    }
}
