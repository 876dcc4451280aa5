//! `p11kms serve` as a separate process over the fixture's token, configured by a file the
//! test writes (credentials, limits, refresh interval), on a free loopback port. For tests
//! that need a real second process: another process changing the token, a stalled token,
//! resource use measured from outside, process hygiene.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

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
}

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub endpoint: String,
    /// Every line the server wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
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
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    let mut child = spawn(cmd);
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let err = child.stderr.take().expect("stderr");
    let lines = Arc::clone(&stderr);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            lines.lock().expect("stderr lines").push(line);
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let mut out = BufReader::new(stdout).lines();
    let addr: SocketAddr = loop {
        match out.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("listening on ") {
                    break a.trim().parse().expect("address");
                }
            }
            _ => panic!(
                "p11kms serve exited before `listening on`:\n{}",
                stderr.lock().expect("stderr lines").join("\n")
            ),
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in out {});
    ServerProcess {
        child,
        addr,
        endpoint: format!("http://{addr}"),
        stderr,
        _dir: dir,
    }
}

fn spawn(mut cmd: Command) -> Child {
    cmd.spawn().expect("start p11kms serve")
}
