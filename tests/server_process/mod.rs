//! `p11kms serve` as a separate process, on a free loopback port: over the fixture's token,
//! configured by a file the test writes (credentials, limits, refresh interval), or over the
//! embedded token of a state folder, as a user starts it. For tests that need a real second
//! process: another process changing the token, a stalled token, resource use measured from
//! outside, process hygiene, start-up refusals, several servers over one token.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aws_sdk_kms::Client;

use crate::{common, sdk};

pub const REGION: &str = "us-east-2";
pub const ACCOUNT: &str = "111122223333";

/// One access key the server accepts.
#[derive(Debug, Clone)]
pub struct Cred {
    pub id: String,
    pub secret: String,
    pub principal: String,
    /// TOML lines added to the credential's table (e.g. `allow_keys = [...]`).
    pub extra: String,
    /// Read from this environment variable instead of a file.
    pub secret_env: Option<String>,
}

impl Cred {
    pub fn new(id: &str, secret: &str, user: &str) -> Cred {
        Cred {
            id: id.into(),
            secret: secret.into(),
            principal: format!("arn:aws:iam::{ACCOUNT}:user/{user}"),
            extra: String::new(),
            secret_env: None,
        }
    }

    /// The fixture's dev credential, read from its state folder.
    pub fn dev() -> Cred {
        let (id, secret) = common::dev_credentials();
        Cred::new(&id, &secret, "dev")
    }
}

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub credentials: Vec<Cred>,
    /// Top-level TOML lines (e.g. `metadata_refresh_ms = 60000`).
    pub top: String,
    /// Lines of the `[server]` table.
    pub server: String,
    /// Lines replacing the `[token]` table's PIN source (default: the fixture's PIN file).
    pub token_pin: Option<String>,
    pub env: Vec<(String, String)>,
    /// Arguments after `serve` (e.g. `--log-format json`).
    pub args: Vec<String>,
}

/// A server can take this long to open the token and print `listening on`.
const START_LIMIT: Duration = Duration::from_secs(60);

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub endpoint: String,
    /// Every line the server wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// What the banner exported (`export NAME=value`, the shell quoting removed), in order.
    pub exported: Vec<(String, String)>,
    stderr_reader: Option<JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An `aws-sdk-kms` client for `cred` (see [`sdk::client`]).
    pub fn client(&self, cred: &Cred) -> Client {
        sdk::client(&self.endpoint, REGION, &cred.id, &cred.secret, None)
    }

    /// A value the banner exported, e.g. `AWS_REGION`.
    pub fn exported(&self, name: &str) -> Option<&str> {
        self.exported
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The credential the banner exported (only an embedded token's dev credential is).
    pub fn banner_cred(&self) -> Cred {
        let get = |name: &str| {
            self.exported(name)
                .unwrap_or_else(|| panic!("{name} in the banner: {:?}", self.exported))
        };
        Cred::new(
            get("AWS_ACCESS_KEY_ID"),
            get("AWS_SECRET_ACCESS_KEY"),
            "dev",
        )
    }

    /// A client exactly as a user pastes the banner: its endpoint, region and credential.
    pub fn banner_client(&self) -> Client {
        let cred = self.banner_cred();
        let region = self
            .exported("AWS_REGION")
            .expect("AWS_REGION in the banner");
        sdk::client(&self.endpoint, region, &cred.id, &cred.secret, None)
    }

    /// A line of the server's `/proc/<pid>/status`, e.g. `VmHWM` (in kB).
    pub fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/status"))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lines").join("\n")
    }

    /// Kills the server and returns everything it wrote to stderr, to the last line.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr_text()
    }
}

/// A server that exited before it printed `listening on`.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The configuration file for `opts`, in `dir`.
fn config_file(dir: &Path, opts: &Options) -> PathBuf {
    let mut token = common::token_toml();
    if let Some(pin) = &opts.token_pin {
        token = token
            .lines()
            .filter(|l| !l.starts_with("pin_file"))
            .chain(std::iter::once(pin.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut text = format!(
        "{}\nregion = \"{REGION}\"\naccount = \"{ACCOUNT}\"\n[token]\n{token}\n[server]\nlisten = \"127.0.0.1:0\"\n{}\n",
        opts.top, opts.server
    );
    for (i, c) in opts.credentials.iter().enumerate() {
        let source = match &c.secret_env {
            Some(var) => format!("secret_env = \"{var}\""),
            None => {
                let f = dir.join(format!("secret-{i}"));
                write_private(&f, &c.secret);
                format!("secret_file = \"{}\"", f.display())
            }
        };
        text.push_str(&format!(
            "[[server.credentials]]\naccess_key_id = \"{}\"\n{source}\nprincipal = \"{}\"\n{}\n",
            c.id, c.principal, c.extra
        ));
    }
    let path = dir.join("p11kms.toml");
    write_private(&path, &text);
    path
}

/// Starts `p11kms serve` with `opts` and waits for `listening on`.
pub fn start(opts: &Options) -> ServerProcess {
    try_start(opts).unwrap_or_else(|e| {
        panic!(
            "p11kms serve exited ({}) before `listening on`:\n{}",
            e.status, e.stderr
        )
    })
}

/// Starts `p11kms serve` with `opts`: the server once it listens, or how it exited.
pub fn try_start(opts: &Options) -> Result<ServerProcess, Exited> {
    let dir = tempfile::Builder::new()
        .prefix("p11kms-serve-")
        .tempdir()
        .expect("temp dir");
    let config = config_file(dir.path(), opts);
    let mut cmd = common::p11kms_cmd();
    cmd.env_remove("P11KMS_CONFIG")
        .env("P11KMS_LOG", "info")
        .args(["--config"])
        .arg(&config)
        .arg("serve")
        .args(&opts.args);
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    launch(cmd, Some(dir))
}

/// Starts `p11kms serve` over the embedded token of `state_dir` (set up by `p11kms token
/// init`), with no configuration file, as a user would; the banner exports its dev
/// credential ([`ServerProcess::banner_client`]).
pub fn start_embedded(state_dir: &Path) -> ServerProcess {
    let mut cmd = common::embedded_cmd(state_dir);
    cmd.env("P11KMS_LISTEN", "127.0.0.1:0").arg("serve");
    launch(cmd, None).unwrap_or_else(|e| {
        panic!(
            "p11kms serve exited ({}) before `listening on`:\n{}",
            e.status, e.stderr
        )
    })
}

/// Runs `cmd` (a `p11kms serve`) and reads its banner up to `listening on`.
fn launch(mut cmd: Command, dir: Option<tempfile::TempDir>) -> Result<ServerProcess, Exited> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start p11kms serve");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let err = child.stderr.take().expect("stderr");
    let lines = Arc::clone(&stderr);
    let stderr_reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            lines.lock().expect("stderr lines").push(line);
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    // Keeps draining stdout after the banner too, so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_LIMIT;
    let (mut printed, mut exported) = (Vec::new(), Vec::new());
    let addr: SocketAddr = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(a) = line.strip_prefix("listening on ") {
                    break a.trim().parse().expect("address");
                }
                if let Some((name, value)) =
                    line.strip_prefix("export ").and_then(|l| l.split_once('='))
                {
                    exported.push((name.to_owned(), shell_unquote(value)));
                }
                printed.push(line);
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = wait_bounded(&mut child, Duration::from_secs(10));
                let _ = stderr_reader.join();
                let stderr = stderr.lock().expect("stderr lines").join("\n");
                return Err(Exited {
                    status,
                    stdout: printed.join("\n"),
                    stderr,
                });
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "p11kms serve printed no `listening on` within {START_LIMIT:?}:\n{}",
                    stderr.lock().expect("stderr lines").join("\n")
                );
            }
        }
    };
    Ok(ServerProcess {
        child,
        addr,
        endpoint: format!("http://{addr}"),
        stderr,
        exported,
        stderr_reader: Some(stderr_reader),
        _dir: dir,
    })
}

/// The exit status of `child`, killing it if it has not exited within `limit`.
fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for p11kms serve") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return child.wait().expect("wait for p11kms serve");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Undoes the banner's shell quoting (`'...'`, with `'\''` for a quote).
fn shell_unquote(v: &str) -> String {
    match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("'\\''", "'"),
        None => v.to_owned(),
    }
}
