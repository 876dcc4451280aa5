//! The server under test: `p11kms serve` as a child process over the bench's token, and the
//! signer for its dev credential.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{load, sign};
use crate::config::Config;
use crate::error::{KmsError, Result};

/// `p11kms serve` as a child process over the bench's state folder.
pub(super) struct Server {
    pub(super) child: Child,
    pub(super) addr: SocketAddr,
    /// From spawn to `listening on`.
    pub(super) startup: Duration,
}

impl Server {
    /// Starts `p11kms serve` (with `extra` arguments, e.g. `--http-floor`) on a free port.
    pub(super) fn start(
        state: &Path,
        log: &Path,
        bin: Option<&Path>,
        extra: &[&str],
    ) -> Result<Server> {
        Server::start_env(state, log, bin, extra, &[])
    }

    /// [`Server::start`] with extra environment variables (e.g. `P11KMS_AUDIT=off`).
    pub(super) fn start_env(
        state: &Path,
        log: &Path,
        bin: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server> {
        let exe = match bin {
            Some(b) => b.to_path_buf(),
            None => std::env::current_exe()
                .map_err(|e| KmsError::io(format!("cannot find this executable: {e}")))?,
        };
        let log = std::fs::File::create(log)
            .map_err(|e| KmsError::io(format!("cannot create the server log: {e}")))?;
        let t0 = Instant::now();
        let mut child = Command::new(exe)
            .arg("serve")
            .args(extra)
            .env("P11KMS_STATE_DIR", state)
            .env("P11KMS_LISTEN", "127.0.0.1:0")
            .env_remove("P11KMS_CONFIG")
            .env_remove("SOFTHSM2_CONF")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| KmsError::io(format!("cannot start p11kms serve: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| KmsError::internal("no server stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the banner, then keeps draining stdout so the server never blocks on it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(KmsError::internal(
                    "p11kms serve did not print `listening on`; see its log",
                ));
            }
        };
        let startup = t0.elapsed();
        let addr = addr
            .parse()
            .map_err(|_| KmsError::internal(format!("bad listening address {addr}")))?;
        Ok(Server {
            child,
            addr,
            startup,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This server as a load target: requests signed by `signer`, successes counted in
    /// `progress`.
    pub(super) fn target<'a>(
        &self,
        signer: &'a sign::Signer,
        progress: &'a Arc<AtomicU64>,
    ) -> load::Target<'a> {
        load::Target {
            addr: self.addr,
            signer,
            server_pid: self.pid(),
            progress,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded token's dev credential, as `serve` prints it.
pub(super) fn credentials(state: &Path) -> Result<(String, String)> {
    let read = |name: &str| {
        std::fs::read_to_string(state.join(name))
            .map(|s| s.trim().to_owned())
            .map_err(|e| KmsError::io(format!("cannot read {name}: {e}")))
    };
    Ok((read("dev-access-key-id")?, read("dev-secret-key")?))
}

pub(super) fn signer(config: &Config, state: &Path, addr: SocketAddr) -> Result<sign::Signer> {
    let (id, secret) = credentials(state)?;
    Ok(sign::Signer::new(
        &id,
        &secret,
        &config.region,
        &addr.to_string(),
    ))
}
