//! What the interoperability tests with the CloudEvents Python SDK share: the peer script, the
//! check that it can run, and an exact comparison of JSON data.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The Python side: see its docstring for the protocol.
pub(crate) const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/cloudevents_peer.py"
);

/// Where the SDK is, once found: `None` when the machine's python3 imports it, else the
/// directory ms-testkit installed it into (for `PYTHONPATH`).
static SDK: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Whether python3 with the SDK can run: the machine's own SDK, else the one ms-testkit
/// installs from `PyPI` (so a fresh machine runs these tests too). Without python3 or `PyPI` a
/// test skips loudly, or fails under `MS_TEST_REQUIRE_SERVICES=1`.
pub(crate) fn python_with_sdk(test: &str) -> bool {
    if SDK.get().is_some() {
        return true;
    }
    match ms_testkit::cloudevents_sdk() {
        Ok(dir) => {
            let _ = SDK.set(dir);
            true
        }
        Err(e) => {
            assert!(
                !ms_testkit::require_services(),
                "python3 with the CloudEvents SDK is required: {e}"
            );
            // On the real stderr, which libtest does not capture: a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: python3 with the CloudEvents SDK is not available: {e}"
            );
            false
        }
    }
}

/// Runs the peer on `request` and returns its answer.
pub(crate) fn peer(request: &Value) -> Value {
    let mut command = Command::new("python3");
    command.arg(PEER);
    if let Some(Some(dir)) = SDK.get() {
        command.env("PYTHONPATH", dir);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("a pipe")
        .write_all(request.to_string().as_bytes())
        .expect("the peer reads its request");
    let output = child.wait_with_output().expect("the peer ends");
    assert!(output.status.success(), "the Python peer failed");
    serde_json::from_slice(&output.stdout).expect("the peer answers JSON")
}

/// Numbers past `u64` and past `f64`'s digits, and trailing zeros: JSON data must arrive as
/// written, not re-serialised through `f64` (Python's `Decimal` prints these as written too).
pub(crate) const PRECISE_NUMBERS: &str =
    r#"{"big":12345678901234567890123,"long":1234567890.123456789,"ratio":1.10,"n":[-0.5,100.0]}"#;

/// `json` without the whitespace between tokens, everything else (numbers, strings, member
/// order) as written: two texts compare equal exactly when they say the same to the digit.
pub(crate) fn compact_json(json: &[u8]) -> String {
    let (mut out, mut in_string, mut escaped) = (Vec::with_capacity(json.len()), false, false);
    for &b in json {
        if in_string {
            in_string = escaped || b != b'"';
            escaped = !escaped && b == b'\\';
        } else if b.is_ascii_whitespace() {
            continue;
        } else {
            in_string = b == b'"';
        }
        out.push(b);
    }
    String::from_utf8_lossy(&out).into_owned()
}
