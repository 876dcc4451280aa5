//! Attacks and faults, each against the real thing: a `p11kms serve` process on loopback (or
//! the library) over a real token, with other real processes changing the token underneath.
//! Every test is bounded in time and says what it defends (issue 8's list). They run one at
//! a time: one of them stalls the whole token.

mod common;
mod plant;
mod sdk;
mod server_process;
mod wire;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::types::DataKeySpec;
use p11kms::kms::types::{
    AliasRequest, CreateKeyRequest, KeyIdRequest, ScheduleKeyDeletionRequest, SecretBytes,
    SignRequest, VerifyRequest,
};
use server_process::{Cred, Options};
use wire::{connect, raw, read_response, request_bytes, signed_headers, JSON};

/// One test at a time (the stall test locks every object of the token).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn error_code<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or("<no code>").to_owned()
}

/// GET `path` on a new connection; `None` if no answer within `within`.
fn get(addr: std::net::SocketAddr, path: &str, within: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, within).ok()?;
    s.set_read_timeout(Some(within)).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

fn dev_client(srv: &server_process::ServerProcess) -> aws_sdk_kms::Client {
    srv.client(&Cred::dev())
}

/// A signed KMS call as raw HTTP, with the dev credential.
fn call(addr: std::net::SocketAddr, target: &str, body: &[u8]) -> wire::Resp {
    let dev = Cred::dev();
    let h = signed_headers(
        addr,
        Some(target),
        Some(JSON),
        body,
        (&dev.id, &dev.secret),
        SystemTime::now(),
        server_process::REGION,
    );
    raw(addr, &request_bytes(addr, "POST", "/", &h, body))
}

fn describe_state(kms: &p11kms::kms::Kms, key: &str) -> String {
    kms.describe_key(common::key_req(key))
        .expect("describe")
        .key_metadata
        .key_state
        .to_string()
}

/// Defect 1. A key disabled by another process, then used through a server that has not
/// refreshed yet: the derivation fails, the failure path re-reads the records. That used to
/// happen under the sealing cache's write lock and deadlock the server for good.
#[test]
fn a_key_disabled_by_another_process_is_answered_and_the_server_stays_up() {
    let _g = serial();
    let srv = server_process::start(&Options {
        credentials: vec![Cred::dev()],
        // The server must not notice the change by itself first.
        top: "metadata_refresh_ms = 600000".into(),
        ..Options::default()
    });
    let rt = runtime();
    let client = dev_client(&srv);
    let key = rt
        .block_on(client.create_key().send())
        .expect("create key")
        .key_metadata
        .expect("metadata")
        .key_id;
    let out = common::p11kms_cmd()
        .args(["key", "disable", &key])
        .output()
        .expect("p11kms key disable");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t0 = Instant::now();
    let r = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(25),
            client
                .generate_data_key_without_plaintext()
                .key_id(&key)
                .key_spec(DataKeySpec::Aes256)
                .send(),
        )
        .await
    });
    let r = r.expect("the request is answered (it used to hang forever)");
    let e = r.expect_err("a disabled key");
    assert_eq!(
        error_code(e.as_service_error().expect("service error")),
        "DisabledException"
    );
    eprintln!("answered DisabledException after {:?}", t0.elapsed());
    // And everything else still works.
    assert_eq!(
        get(srv.addr, "/healthz", Duration::from_secs(5)).map(|r| r.0),
        Some(200)
    );
    let k2 = rt
        .block_on(client.create_key().send())
        .expect("create key")
        .key_metadata
        .expect("metadata")
        .key_id;
    rt.block_on(
        client
            .generate_data_key_without_plaintext()
            .key_id(&k2)
            .key_spec(DataKeySpec::Aes256)
            .send(),
    )
    .expect("the server still seals");
}

/// Takes an exclusive `fcntl` lock on every object file of the SoftHSM token in `state`:
/// SoftHSM in any other process then blocks on its next use of a token object (as it would
/// behind a slow disk or a crashed process holding its files). Released when dropped.
struct TokenStall(#[allow(dead_code)] Vec<std::fs::File>);

impl TokenStall {
    fn begin(state: &std::path::Path) -> TokenStall {
        let mut held = Vec::new();
        for dir in std::fs::read_dir(state.join("tokens"))
            .expect("token folder")
            .flatten()
        {
            for f in std::fs::read_dir(dir.path()).expect("token dir").flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with("token.")
                    || !(name.ends_with(".lock") || name.ends_with(".object"))
                {
                    continue;
                }
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(f.path())
                    .expect("open object file");
                let lock = libc::flock {
                    l_type: libc::F_WRLCK as libc::c_short,
                    l_whence: libc::SEEK_SET as libc::c_short,
                    l_start: 0,
                    l_len: 0,
                    l_pid: 0,
                };
                use std::os::fd::AsRawFd;
                // SAFETY: a valid descriptor and a valid flock structure.
                let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &lock) };
                assert_eq!(rc, 0, "fcntl lock {name}");
                held.push(file);
            }
        }
        assert!(!held.is_empty());
        TokenStall(held)
    }
}

/// Defect 2. With the token stalled, `/healthz` answers, new connections are accepted, and
/// `/readyz` says not ready; once the token answers again, so does everything.
#[test]
fn a_stalled_token_does_not_freeze_the_server() {
    let _g = serial();
    if common::token_kind() != common::TokenKind::SoftHsm {
        common::skip(
            "a_stalled_token_does_not_freeze_the_server",
            "the stall is made with SoftHSM's object-file locks (Kryoptic's sqlite answers a \
             held lock at once; it does not block)",
        );
        return;
    }
    // A key the server has never used: its first use must read the CMK's object file.
    let key = common::new_key();
    let srv = server_process::start(&Options {
        credentials: vec![Cred::dev()],
        top: "metadata_refresh_ms = 600000".into(),
        ..Options::default()
    });
    assert_eq!(
        get(srv.addr, "/readyz", Duration::from_secs(5)).map(|r| r.0),
        Some(200)
    );
    let stall = TokenStall::begin(common::state_dir());
    let body = format!(r#"{{"KeyId":"{key}","KeySpec":"AES_256"}}"#);
    let addr = srv.addr;
    let stuck: Vec<_> = (0..6)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                call(addr, "GenerateDataKeyWithoutPlaintext", body.as_bytes()).status
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    let health = get(srv.addr, "/healthz", Duration::from_secs(3));
    assert_eq!(
        health.map(|r| r.0),
        Some(200),
        "healthz must answer while the token is stalled"
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    let ready = get(srv.addr, "/readyz", Duration::from_secs(5)).expect("readyz answers");
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert!(ready.1.contains("token call"), "{}", ready.1);
    drop(stall);
    for t in stuck {
        assert_eq!(
            t.join().expect("request thread"),
            200,
            "the stalled request completes"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(srv.addr, "/readyz", Duration::from_secs(5)).map(|r| r.0) == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ready again once the token answers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Defect 3. `SignedHeaders` naming `host` over and over, with a long Host header, made the
/// server build a canonical request of (repeats × Host) bytes before refusing it, with no
/// secret needed. Now it is refused from the head, and costs nothing.
#[test]
fn repeated_signed_headers_cost_nothing() {
    let _g = serial();
    let srv = server_process::start(&Options {
        credentials: vec![Cred::dev()],
        ..Options::default()
    });
    let dev = Cred::dev();
    let before = srv.status_kb("VmHWM");
    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .expect("date");
    for (host_len, repeats) in [(50_000, 1000), (12_000, 500)] {
        let host = "h".repeat(host_len);
        let signed = vec!["host"; repeats].join(";");
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{}/{}/kms/aws4_request, SignedHeaders={signed}, Signature={}",
            dev.id,
            &date[..8],
            server_process::REGION,
            "0".repeat(64)
        );
        for _ in 0..3 {
            let req = format!(
                "POST / HTTP/1.1\r\nhost: {host}\r\nx-amz-date: {date}\r\nauthorization: {auth}\r\n\
                 x-amz-target: TrentService.ListKeys\r\ncontent-type: {JSON}\r\ncontent-length: 2\r\n\r\n{{}}"
            );
            let t0 = Instant::now();
            let mut s = connect(srv.addr);
            let _ = s.write_all(req.as_bytes());
            let r = read_response(&mut s);
            assert!(
                (400..500).contains(&r.status),
                "refused as the client's error: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            assert!(t0.elapsed() < Duration::from_secs(3));
        }
    }
    let grew = srv.status_kb("VmHWM").saturating_sub(before);
    eprintln!("server peak RSS grew by {grew} kB");
    assert!(grew < 8 * 1024, "peak RSS grew by {grew} kB");
    assert_eq!(
        get(srv.addr, "/healthz", Duration::from_secs(5)).map(|r| r.0),
        Some(200)
    );
}

/// Defect 4. A request signed without `X-Amz-Target` (botocore's SigV4Auth signs only the
/// headers present), with one added afterwards: the operation is not covered by the
/// signature and must not run.
#[test]
fn an_operation_the_signature_does_not_cover_is_not_executed() {
    let _g = serial();
    let key = common::new_key();
    let srv = server_process::start(&Options {
        credentials: vec![Cred::dev()],
        ..Options::default()
    });
    let dev = Cred::dev();
    let body = format!(r#"{{"KeyId":"{key}"}}"#);
    let mut h = signed_headers(
        srv.addr,
        None,
        Some(JSON),
        body.as_bytes(),
        (&dev.id, &dev.secret),
        SystemTime::now(),
        server_process::REGION,
    );
    h.push(("x-amz-target".into(), "TrentService.DisableKey".into()));
    let r = raw(
        srv.addr,
        &request_bytes(srv.addr, "POST", "/", &h, body.as_bytes()),
    );
    let msg = r.assert_error(400, "IncompleteSignatureException");
    assert!(msg.to_ascii_lowercase().contains("x-amz-target"), "{msg}");
    common::kms().refresh().expect("refresh");
    assert_eq!(
        describe_state(common::kms(), &key),
        "Enabled",
        "the key was not disabled"
    );
}

/// This process holds the attacker's connections: let it have as many as it may.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to an rlimit structure.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Defect 5. 1,100 connections that send half a request head and then nothing used to fill
/// the connection limit and park the accept loop: a real SDK timed out. Now the longest-idle
/// connections make room.
#[test]
fn idle_half_open_connections_do_not_lock_clients_out() {
    let _g = serial();
    raise_fd_limit();
    let srv = server_process::start(&Options {
        credentials: vec![Cred::dev()],
        ..Options::default()
    });
    let mut idle = Vec::new();
    for i in 0..1100 {
        match TcpStream::connect_timeout(&srv.addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                let _ = s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n");
                idle.push(s);
            }
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let rt = runtime();
    let client = dev_client(&srv);
    let t0 = Instant::now();
    let r = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), client.list_keys().send()).await
    });
    let r = r.expect("ListKeys answered within 10 s");
    r.expect("ListKeys succeeds");
    eprintln!(
        "ListKeys with 1,100 idle connections open: {:?}",
        t0.elapsed()
    );
    for _ in 0..5 {
        rt.block_on(client.list_keys().send()).expect("again");
    }
    drop(idle);
}

/// Defect 6. Someone holding the PIN plants a key of known value labelled as a new backing
/// version of an existing key, and a record that makes it current. Every later ciphertext
/// under that key would be readable offline. Only a key the token generated and that never
/// left it may back a KMS key.
#[test]
fn a_planted_backing_key_is_never_used() {
    let _g = serial();
    let key = common::new_key();
    let s = plant::session();
    plant::plant_current_version(&s, &key, [0x42; 32]);

    let fresh = common::fresh_kms();
    let e = fresh
        .encrypt(p11kms::kms::types::EncryptRequest {
            key_id: Some(key.clone().into()),
            plaintext: Some(p11kms::kms::types::SecretBytes(zeroize::Zeroizing::new(
                b"secret".to_vec(),
            ))),
            ..Default::default()
        })
        .expect_err("nothing may be sealed under the planted key");
    assert_eq!(e.aws_name(), "KeyUnavailableException");
    assert!(e.message().contains("CKA_LOCAL"), "{}", e.message());

    // Two objects under one label (one genuine, one planted) are refused as ambiguous.
    let k2 = common::new_key();
    plant::plant_known_key(
        &s,
        &format!("p11kms:cmk:{k2}:v1"),
        &plant::cmk_id(&k2, 1),
        [0x43; 32],
    );
    let fresh = common::fresh_kms();
    let e = fresh
        .generate_data_key_without_plaintext(p11kms::kms::types::GenerateDataKeyRequest {
            key_id: Some(k2.clone().into()),
            number_of_bytes: Some(32),
            ..Default::default()
        })
        .map(|_| ())
        .expect_err("an ambiguous backing key is not used");
    assert_eq!(e.aws_name(), "KeyUnavailableException");
    assert!(e.message().contains("labelled"), "{}", e.message());
}

/// Defect 7. A record that this version cannot read (a newer version's state or KDF, or
/// damage) made the key look gone and its backing key an orphan, destroyed ten minutes later.
/// And a deletion another process cancelled was carried out from a stale view.
#[test]
fn backing_keys_are_never_destroyed_on_a_stale_or_partial_view() {
    let _g = serial();
    let s = plant::session();
    let kms = common::kms();
    let newer = common::new_key();
    let damaged = common::new_key();
    let mut record = plant::key_record_json(&s, &newer);
    record["state"] = "SomeFutureState".into();
    record["kdf"] = "HKDF_SHA256".into();
    plant::replace_key_record(&s, &newer, &serde_json::to_vec(&record).expect("json"));
    plant::replace_key_record(&s, &damaged, b"\x00\x01 not a record \xff");

    let fresh = common::fresh_kms();
    for _ in 0..2 {
        fresh
            .sweep_orphan_cmks_after(Duration::ZERO)
            .expect("orphan sweep");
    }
    for k in [&newer, &damaged] {
        assert_eq!(
            plant::secret_keys(&s, &format!("p11kms:cmk:{k}:v1")).len(),
            1,
            "the backing key of {k} survives the orphan sweep"
        );
    }
    // The newer record's key is known, unavailable, and refused for use and change.
    assert_eq!(describe_state(&fresh, &newer), "Unavailable");
    let e = fresh
        .generate_data_key(p11kms::kms::types::GenerateDataKeyRequest {
            key_id: Some(newer.clone().into()),
            number_of_bytes: Some(32),
            ..Default::default()
        })
        .map(|_| ())
        .expect_err("unavailable");
    assert_eq!(e.aws_name(), "KMSInvalidStateException");
    let e = fresh
        .disable_key(common::key_req(&newer))
        .expect_err("not changed");
    assert_eq!(e.aws_name(), "KMSInvalidStateException");

    // Scheduled for deletion here, cancelled by another process; this process has not
    // refreshed when its sweep runs past the deletion date.
    let key = common::new_key();
    kms.schedule_key_deletion(ScheduleKeyDeletionRequest {
        key_id: Some(key.clone().into()),
        pending_window_in_days: Some(7),
    })
    .expect("schedule");
    let other = common::fresh_kms();
    other
        .cancel_key_deletion(common::key_req(&key))
        .expect("cancel elsewhere");
    let later = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 31 * 86_400_000;
    let swept = kms.sweep_deletions_at(later).expect("sweep");
    // Only this key is asked about: another test of this binary may have keys pending
    // deletion at the same time, which this sweep rightly destroys.
    let id: p11kms::kms::KeyId = key.parse().expect("key id");
    assert!(!swept.contains(&id), "nothing was due any more: {swept:?}");
    assert_eq!(
        plant::secret_keys(&s, &format!("p11kms:cmk:{key}:v1")).len(),
        1
    );
    assert_eq!(describe_state(&other, &key), "Disabled");
    assert_eq!(
        describe_state(kms, &key),
        "Disabled",
        "this process caught up"
    );
}

/// Defect 8. Alias operations used to check only the target key: a principal limited to its
/// own key could create an alias another principal trusts (in `allow_keys`), and an alias
/// whose target could not be resolved passed the check.
#[test]
fn alias_names_are_authorized_and_failures_are_closed() {
    let _g = serial();
    let mine = common::new_key();
    let theirs = common::new_key();
    let limited = Cred {
        extra: format!(
            "allow_actions = [\"kms:CreateAlias\", \"kms:UpdateAlias\", \"kms:DeleteAlias\", \"kms:DescribeKey\"]\n\
             allow_keys = [\"{mine}\", \"alias/limited-*\"]"
        ),
        ..Cred::new("AKIALIMITEDLIMITED01", "limited-secret", "limited")
    };
    let srv = server_process::start(&Options {
        credentials: vec![Cred::dev(), limited.clone()],
        top: "metadata_refresh_ms = 0".into(),
        ..Options::default()
    });
    let rt = runtime();
    let dev = dev_client(&srv);
    let lim = srv.client(&limited);
    let code = |r: Result<(), String>| r.err().unwrap_or_else(|| "ok".into());
    let create = |c: &aws_sdk_kms::Client, alias: &str, key: &str| {
        rt.block_on(c.create_alias().alias_name(alias).target_key_id(key).send())
            .map(|_| ())
            .map_err(|e| error_code(e.as_service_error().expect("service error")))
    };
    let update = |c: &aws_sdk_kms::Client, alias: &str, key: &str| {
        rt.block_on(c.update_alias().alias_name(alias).target_key_id(key).send())
            .map(|_| ())
            .map_err(|e| error_code(e.as_service_error().expect("service error")))
    };
    let delete = |c: &aws_sdk_kms::Client, alias: &str| {
        rt.block_on(c.delete_alias().alias_name(alias).send())
            .map(|_| ())
            .map_err(|e| error_code(e.as_service_error().expect("service error")))
    };
    let tag = &mine[..8];
    // A name the limited principal was not given, pointing at its own key: denied.
    assert_eq!(
        code(create(&lim, &format!("alias/payments-{tag}"), &mine)),
        "AccessDeniedException"
    );
    // Its own names: allowed on its own key, not on another key.
    assert_eq!(
        code(create(&lim, &format!("alias/limited-{tag}"), &mine)),
        "ok"
    );
    assert_eq!(
        code(update(&lim, &format!("alias/limited-{tag}"), &theirs)),
        "AccessDeniedException"
    );
    // Someone else's alias pointing at someone else's key: neither moved nor deleted.
    assert_eq!(
        code(create(&dev, &format!("alias/payments-{tag}"), &theirs)),
        "ok"
    );
    assert_eq!(
        code(update(&lim, &format!("alias/payments-{tag}"), &mine)),
        "AccessDeniedException"
    );
    assert_eq!(
        code(delete(&lim, &format!("alias/payments-{tag}"))),
        "AccessDeniedException"
    );
    // An alias whose target does not resolve (a record left behind by a crash): closed.
    let s = plant::session();
    let dangling = format!("alias/payments-dangling-{tag}");
    let record = serde_json::json!({
        "record": "alias_v1",
        "name": dangling,
        "target": uuid::Uuid::new_v4().to_string(),
        "created_ms": 1,
        "updated_ms": 1,
    });
    plant::write_record(
        &s,
        &format!("p11kms:alias:{dangling}:0000000001:0badf00d"),
        &serde_json::to_vec(&record).expect("json"),
    );
    plant::announce(&s);
    assert_eq!(code(delete(&lim, &dangling)), "AccessDeniedException");
    assert_eq!(
        code(update(&lim, &dangling, &mine)),
        "AccessDeniedException"
    );
    assert_eq!(code(delete(&dev, &dangling)), "ok");
    assert_eq!(code(delete(&lim, &format!("alias/limited-{tag}"))), "ok");
}

/// Defect 9. Two CreateAlias calls for one name in one process could both succeed (the
/// check and the write were not one step); concurrent state changes could each apply to a
/// state the other had already changed.
#[test]
fn concurrent_writes_in_one_process_have_one_outcome() {
    let _g = serial();
    let kms = common::kms();
    let target = common::new_key();
    for round in 0..12 {
        let name = format!("alias/race-{}-{round}", &target[..8]);
        let barrier = Arc::new(Barrier::new(6));
        let wins: usize = (0..6)
            .map(|_| {
                let (name, target, barrier) = (name.clone(), target.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    common::kms()
                        .create_alias(AliasRequest {
                            scope: None,
                            alias_name: Some(name),
                            target_key_id: Some(target.into()),
                        })
                        .is_ok()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().expect("thread")))
            .sum();
        assert_eq!(
            wins, 1,
            "round {round}: exactly one CreateAlias of {name} succeeds"
        );
    }
    for round in 0..12 {
        let key = common::new_key();
        kms.disable_key(common::key_req(&key)).expect("disable");
        let barrier = Arc::new(Barrier::new(2));
        let (k1, b1) = (key.clone(), Arc::clone(&barrier));
        let schedule = std::thread::spawn(move || {
            b1.wait();
            common::kms()
                .schedule_key_deletion(ScheduleKeyDeletionRequest {
                    key_id: Some(k1.into()),
                    pending_window_in_days: Some(7),
                })
                .is_ok()
        });
        let (k2, b2) = (key.clone(), Arc::clone(&barrier));
        let enable = std::thread::spawn(move || {
            b2.wait();
            common::kms().enable_key(KeyIdRequest {
                key_id: Some(k2.into()),
                grant_tokens: None,
            })
        });
        let scheduled = schedule.join().expect("thread");
        let enabled = enable.join().expect("thread");
        assert!(
            scheduled,
            "round {round}: scheduling a Disabled or Enabled key succeeds"
        );
        // Whatever the order, a successful ScheduleKeyDeletion is the final state unless an
        // EnableKey after it succeeded, which it cannot (the key is then pending deletion).
        let state = describe_state(kms, &key);
        assert_eq!(
            state, "PendingDeletion",
            "round {round} (enable: {enabled:?})"
        );
        let fresh_state = describe_state(&common::fresh_kms(), &key);
        assert_eq!(
            fresh_state, "PendingDeletion",
            "round {round}: the token agrees"
        );
    }
}

/// Defect 11. `serve` cannot dump core, is not dumpable, and keeps no secret in its
/// environment once it has read it.
#[test]
fn the_server_process_keeps_its_secrets_to_itself() {
    let _g = serial();
    let pin = std::fs::read_to_string(common::state_dir().join("user.pin"))
        .expect("pin")
        .trim()
        .to_owned();
    let mut cred = Cred::new("AKIAENVSECRETENV0001", "an-env-secret-for-the-test", "env");
    cred.secret_env = Some("P11KMS_TEST_CRED_SECRET".into());
    let srv = server_process::start(&Options {
        credentials: vec![cred.clone()],
        token_pin: Some("pin_env = \"P11KMS_TEST_PIN\"".into()),
        env: vec![
            ("P11KMS_TEST_PIN".into(), pin.clone()),
            ("P11KMS_TEST_CRED_SECRET".into(), cred.secret.clone()),
        ],
        ..Options::default()
    });
    // The secrets work...
    let rt = runtime();
    rt.block_on(srv.client(&cred).list_keys().send())
        .expect("the credential read from the environment works");
    // ...and are gone from the environment the kernel shows.
    let environ = std::fs::read(format!("/proc/{}/environ", srv.pid())).expect("environ");
    let text = String::from_utf8_lossy(&environ);
    assert!(!text.contains(&pin), "the PIN is still in the environment");
    assert!(
        !text.contains(&cred.secret),
        "the secret is still in the environment"
    );
    assert!(
        text.contains("P11KMS_STATE_DIR"),
        "other variables are untouched"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.pid())).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
    assert_eq!(core.split_whitespace().nth(5), Some("0"), "{core}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !srv.stderr_text().contains("dumpable=0") {
        assert!(
            Instant::now() < deadline,
            "start-up log: {}",
            srv.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Defect 11. A client never sees the token's internals in an answer; the log has them.
#[test]
fn internal_failures_are_answered_generically() {
    let _g = serial();
    // A key whose backing key is refused (see the planted-key test) fails on the server side.
    let key = common::new_key();
    let s = plant::session();
    plant::plant_current_version(&s, &key, [0x44; 32]);
    let srv = server_process::start(&Options {
        credentials: vec![Cred::dev()],
        ..Options::default()
    });
    let r = call(
        srv.addr,
        "Encrypt",
        format!(r#"{{"KeyId":"{key}","Plaintext":"aGk="}}"#).as_bytes(),
    );
    let msg = r.assert_error(500, "KeyUnavailableException");
    let rid = r.request_id();
    assert!(
        !msg.contains("CKA_") && !msg.contains("p11kms:cmk"),
        "{msg}"
    );
    assert!(msg.contains(&rid), "{msg}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !srv.stderr_text().contains(&rid) {
        assert!(
            Instant::now() < deadline,
            "the log names the request: {}",
            srv.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        srv.stderr_text().contains("CKA_LOCAL"),
        "the log has the details"
    );
}

/// Review finding 1. A head declaring a `Content-Length` just over the limit (within the
/// 1 MiB the server reads and throws away, so that a client still sending sees its 413), and
/// then no body. That discard ran before the signature is checked and had no time limit: any
/// client could pin connections forever, and busy connections are never evicted. Now the
/// 413 comes within the discard's time limit, the connection is closed, and others are
/// served meanwhile.
#[test]
fn a_declared_body_that_never_arrives_is_answered_in_bounded_time() {
    let _g = serial();
    let max = 64 << 10;
    let srv = server_process::start(&Options {
        credentials: vec![Cred::dev()],
        server: format!("max_body_bytes = {max}"),
        ..Options::default()
    });
    let head = format!(
        "POST / HTTP/1.1\r\nhost: {}\r\nx-amz-target: TrentService.ListKeys\r\n\
         content-type: {JSON}\r\ncontent-length: {}\r\n\r\n",
        srv.addr,
        max + 1000
    );
    let t0 = Instant::now();
    let silent: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(srv.addr);
            s.set_read_timeout(Some(Duration::from_secs(6)))
                .expect("timeout");
            s.write_all(head.as_bytes()).expect("write head");
            s
        })
        .collect();
    // Others are served while those wait.
    assert_eq!(
        get(srv.addr, "/healthz", Duration::from_secs(3)).map(|r| r.0),
        Some(200)
    );
    for mut s in silent {
        let r = read_response(&mut s);
        assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("connection"), Some("close"));
        // And the server closed the connection (a timeout here would mean it is still held).
        match s.read(&mut [0u8; 1]) {
            Ok(0) => {}
            Ok(_) => panic!("more bytes after the 413"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "the connection stayed open: {e}"
            ),
        }
    }
    let took = t0.elapsed();
    eprintln!("eight silent oversized requests answered 413 within {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(call(srv.addr, "ListKeys", b"{}").status, 200);
}

/// An asymmetric key's public key lives in its record, a data object whoever holds the PIN
/// can replace. A record whose public key is another key's must not make Verify accept that
/// other key's signatures, nor GetPublicKey hand out a key the token does not hold: before
/// first use the public key is proven to be the token's (a signature, an encryption, or ECDH
/// with a throwaway pair), else KeyUnavailableException.
#[test]
fn a_public_key_swapped_in_the_record_is_refused() {
    let _g = serial();
    let s = plant::session();
    let kms = common::kms();
    let create = |spec: &str, usage: &str| {
        kms.create_key(CreateKeyRequest {
            key_spec: Some(spec.into()),
            key_usage: Some(usage.into()),
            ..Default::default()
        })
        .expect("create key")
        .key_metadata
        .key_id
    };
    for (spec, usage) in [
        ("ECC_NIST_P256", "SIGN_VERIFY"),
        ("RSA_2048", "ENCRYPT_DECRYPT"),
        ("ECC_NIST_P256", "KEY_AGREEMENT"),
    ] {
        let victim = create(spec, usage);
        let attacker = create(spec, usage);
        let theirs = plant::key_record_json(&s, &attacker)["public_key"].clone();
        let mut record = plant::key_record_json(&s, &victim);
        assert!(record["public_key"].is_string(), "{record}");
        record["public_key"] = theirs;
        plant::replace_key_record(&s, &victim, &serde_json::to_vec(&record).expect("json"));

        let fresh = common::fresh_kms();
        let e = fresh
            .get_public_key(common::key_req(&victim))
            .map(|_| ())
            .expect_err("a public key the token does not hold is not handed out");
        assert_eq!(
            e.aws_name(),
            "KeyUnavailableException",
            "{spec} {usage} {e:?}"
        );
        assert!(e.message().contains("does not belong"), "{e:?}");
        if usage == "SIGN_VERIFY" {
            let signed = fresh
                .sign(SignRequest {
                    key_id: Some(attacker.as_str().into()),
                    message: Some(SecretBytes(b"forged".to_vec().into())),
                    signing_algorithm: Some("ECDSA_SHA_256".into()),
                    ..Default::default()
                })
                .expect("the attacker's own key signs");
            let e = fresh
                .verify(VerifyRequest {
                    key_id: Some(victim.as_str().into()),
                    message: Some(SecretBytes(b"forged".to_vec().into())),
                    signature: Some(signed.signature),
                    signing_algorithm: Some("ECDSA_SHA_256".into()),
                    ..Default::default()
                })
                .map(|_| ())
                .expect_err("the victim key does not vouch for the attacker's signature");
            assert_eq!(e.aws_name(), "KeyUnavailableException");
        }
        // The attacker's own key is untouched.
        fresh
            .get_public_key(common::key_req(&attacker))
            .expect("an untouched key's public key");
    }
}
