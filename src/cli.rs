//! The `p11kms` command line.
//!
//! A thin caller of the library: every command builds the operation's request, calls [`Kms`]
//! and prints the response, either readable (default) or, with `--json`, the response type
//! itself serialized with its AWS field names. Errors go to stderr as
//! `error: <AwsExceptionName>: <message>` (or `{"__type":..,"message":..}` with `--json`) and
//! exit 1; usage errors exit 2 (clap).
//!
//! Secrets: PINs are never read here (the library reads them); plaintexts and data keys are
//! printed only by the commands whose job is to output them, and are kept in zeroizing buffers
//! on the way.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::config::{Config, ConfigSource, EmbeddedToken};
use crate::envelope;
use crate::error::{KmsError, Result};
use crate::kms::types::*;
use crate::kms::{EncryptionContext, Kms};

/// Plaintext limit of Encrypt; one byte more is read so the library can refuse oversized input.
const MAX_ENCRYPT_INPUT: usize = 4096;
/// Base64 text of a ciphertext blob (at most 6144 bytes) is about 8 KiB; allow generous
/// whitespace but do not read an unbounded stream.
const MAX_BLOB_TEXT: usize = 64 * 1024;
/// Files smaller than this finish too fast for a progress bar to be worth drawing.
const PROGRESS_MIN_BYTES: u64 = 8 << 20;
/// Envelope data keys are AES-256 keys.
const DATA_KEY_LEN: usize = 32;

#[derive(Parser)]
#[command(
    name = "p11kms",
    version,
    about = "An AWS KMS-compatible key service whose master keys live in a PKCS#11 token",
    after_help = "Without --config or P11KMS_CONFIG, p11kms uses its embedded SoftHSMv2 token \
                  in P11KMS_STATE_DIR (default ./var); create it with `p11kms token init`."
)]
struct Cli {
    /// TOML configuration file (default: the embedded SoftHSMv2 token).
    #[arg(long, global = true, env = "P11KMS_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    /// Machine-readable output: the operation's response as JSON, with AWS field names.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set up, describe and maintain the token.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Manage KMS keys (CreateKey, ListKeys, DescribeKey, ...).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Manage aliases (CreateAlias, UpdateAlias, DeleteAlias, ListAliases).
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Data keys (GenerateDataKey, GenerateDataKeyWithoutPlaintext).
    #[command(subcommand)]
    Datakey(DatakeyCmd),
    /// Encrypt up to 4096 bytes from a file or stdin; prints the base64 ciphertext blob.
    Encrypt(EncryptArgs),
    /// Decrypt a base64 ciphertext blob; writes the raw plaintext.
    Decrypt(DecryptArgs),
    /// Re-encrypt a base64 ciphertext blob under another key.
    Reencrypt(ReencryptArgs),
    /// Random bytes from the token's RNG (GenerateRandom), base64.
    Random(RandomArgs),
    /// Encrypt or decrypt files of any size under a data key (client-side envelope format).
    #[command(subcommand)]
    Envelope(EnvelopeCmd),
    /// Serve the AWS KMS JSON API over HTTP (or HTTPS when a certificate is configured).
    Serve(ServeArgs),
    /// Measure throughput and latency against the token's own ceiling (on a fresh temporary
    /// token; writes BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (overrides the config and P11KMS_LISTEN), e.g. 127.0.0.1:4599.
    #[arg(long)]
    listen: Option<String>,
    /// For `p11kms bench`: serve a fixed answer to every request (no SigV4, no token), with
    /// the same runtime and connection settings: the HTTP floor.
    #[arg(long, hide = true)]
    http_floor: bool,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create the embedded SoftHSMv2 token and its state files (idempotent). With
    /// --so-pin-file, initialise instead the token a configuration file names, in its module's
    /// first free slot (software tokens such as Kryoptic; use the vendor's tools for HSMs).
    Init {
        /// File holding the security officer PIN to set (mode 0600/0400); the user PIN is the
        /// configured one.
        #[arg(long, value_name = "FILE")]
        so_pin_file: Option<PathBuf>,
    },
    /// Describe the token, its capabilities and how data keys are sealed.
    Info,
    /// One round of upkeep: refresh metadata, destroy keys past their deletion date, sweep
    /// orphaned key material.
    Sweep,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a symmetric key in the token (CreateKey).
    Create {
        /// Free text shown by `key describe`.
        #[arg(long)]
        description: Option<String>,
        /// A tag as KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
    },
    /// List keys (ListKeys). Without --limit, all pages.
    List {
        /// One page of at most this many keys (1 to 1000).
        #[arg(long)]
        limit: Option<i64>,
        /// Start after this key (NextMarker of the previous page).
        #[arg(long)]
        marker: Option<String>,
    },
    /// Show a key's metadata (DescribeKey).
    Describe { key: String },
    /// Enable a key (EnableKey).
    Enable { key: String },
    /// Disable a key (DisableKey).
    Disable { key: String },
    /// Schedule a key's deletion (ScheduleKeyDeletion), after 7 to 30 days (default 30).
    ScheduleDeletion {
        key: String,
        /// Waiting period in days (7 to 30).
        #[arg(long)]
        days: Option<i64>,
    },
    /// Cancel a scheduled deletion (CancelKeyDeletion); the key comes back Disabled.
    CancelDeletion { key: String },
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Create an alias (CreateAlias).
    Create { name: String, key: String },
    /// Point an alias at another key (UpdateAlias).
    Update { name: String, key: String },
    /// Delete an alias (DeleteAlias).
    Delete { name: String },
    /// List aliases (ListAliases). Without --limit, all pages.
    List {
        /// Only aliases of this key.
        #[arg(long)]
        key: Option<String>,
        /// One page of at most this many aliases (1 to 1000).
        #[arg(long)]
        limit: Option<i64>,
        /// Start after this alias (NextMarker of the previous page).
        #[arg(long)]
        marker: Option<String>,
    },
}

#[derive(Subcommand)]
enum DatakeyCmd {
    /// Generate a data key (default AES_256).
    Generate(DatakeyArgs),
}

#[derive(Args)]
struct DatakeyArgs {
    /// The KMS key (id, ARN, alias name or alias ARN).
    #[arg(long)]
    key: String,
    /// Only the ciphertext blob (GenerateDataKeyWithoutPlaintext).
    #[arg(long)]
    without_plaintext: bool,
    /// AES_256 or AES_128.
    #[arg(long, conflicts_with = "bytes")]
    spec: Option<String>,
    /// Data key length in bytes (1 to 1024), instead of --spec.
    #[arg(long)]
    bytes: Option<i64>,
    /// Encryption context pair (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    context: Vec<String>,
}

#[derive(Args)]
struct EncryptArgs {
    /// The KMS key (key id, key ARN, alias name or alias ARN).
    #[arg(long)]
    key: String,
    /// Plaintext file (default: stdin).
    #[arg(long = "in", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Encryption context pair (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    context: Vec<String>,
}

#[derive(Args)]
struct DecryptArgs {
    /// File with the base64 ciphertext blob (default: stdin).
    #[arg(long, value_name = "FILE")]
    blob_file: Option<PathBuf>,
    /// Refuse the blob unless it is under this key.
    #[arg(long)]
    key: Option<String>,
    /// The blob's encryption context pair (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    context: Vec<String>,
    /// Write the plaintext here (mode 0600, replaced atomically) instead of stdout. With --json
    /// the printed response then leaves out Plaintext.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ReencryptArgs {
    /// The destination key.
    #[arg(long)]
    key: String,
    /// Refuse the blob unless it is under this key.
    #[arg(long)]
    source_key: Option<String>,
    /// File with the base64 ciphertext blob (default: stdin).
    #[arg(long, value_name = "FILE")]
    blob_file: Option<PathBuf>,
    /// The blob's encryption context pair (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    context: Vec<String>,
    /// The new blob's encryption context pair (repeatable).
    #[arg(long = "dest-context", value_name = "KEY=VALUE")]
    dest_context: Vec<String>,
}

#[derive(Args)]
struct RandomArgs {
    /// Number of bytes (1 to 1024).
    #[arg(long)]
    bytes: i64,
}

#[derive(Subcommand)]
enum EnvelopeCmd {
    /// Encrypt a file under a fresh data key.
    Encrypt {
        /// The KMS key (key id, key ARN, alias name or alias ARN).
        #[arg(long)]
        key: String,
        /// The file to encrypt.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// The envelope file to write (replaced atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Encryption context pair, stored in the file's header (repeatable).
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
        /// Use GenerateDataKeyWithoutPlaintext and then Decrypt the blob (the two-component
        /// flow), instead of GenerateDataKey.
        #[arg(long)]
        without_plaintext: bool,
    },
    /// Decrypt an envelope file. Nothing is left at --out if anything fails.
    Decrypt {
        /// The envelope file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Where to write the plaintext (mode 0600, only once all of it authenticated).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Require this pair in the file's stored encryption context (repeatable).
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
}

/// Parses the arguments, runs the command and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    init_logging();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e, json);
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `P11KMS_LOG` (`tracing` filter syntax, e.g. `info` or
/// `p11kms=debug`; default `warn`). Nothing secret is ever logged.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("P11KMS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(true)
        .try_init();
}

fn report_error(e: &KmsError, json: bool) {
    let line = if json {
        serde_json::json!({ "__type": e.aws_name(), "message": e.message() }).to_string()
    } else {
        format!("error: {}: {}", e.aws_name(), e.message())
    };
    let _ = writeln!(io::stderr().lock(), "{line}");
}

fn run(cli: Cli) -> Result<()> {
    // The bench makes its own token and ignores the configured one.
    if let Command::Bench(args) = cli.command {
        return crate::bench::run(args);
    }
    // An empty P11KMS_CONFIG means "not set", as Config::resolve reads it.
    let path = cli.config.filter(|p| !p.as_os_str().is_empty());
    let config = Config::resolve(path.as_deref())?;
    let out = Out { json: cli.json };
    match cli.command {
        Command::Token(TokenCmd::Init { so_pin_file }) => {
            token_init(&config, so_pin_file.as_deref(), &out)
        }
        // Unenforced: `token info` must be able to say why a token fails
        // require_in_token_sealing.
        Command::Token(TokenCmd::Info) => token_info(
            &config,
            &explain_open(&config, Kms::open_unenforced(&config))?,
            &out,
        ),
        Command::Token(TokenCmd::Sweep) => token_sweep(&open(&config)?, &out),
        Command::Key(cmd) => key(&open(&config)?, &out, cmd),
        Command::Alias(cmd) => alias(&open(&config)?, &out, cmd),
        Command::Datakey(DatakeyCmd::Generate(args)) => datakey(&open(&config)?, &out, args),
        Command::Encrypt(args) => encrypt(&open(&config)?, &out, args),
        Command::Decrypt(args) => decrypt(&open(&config)?, &out, args),
        Command::Reencrypt(args) => reencrypt(&open(&config)?, &out, args),
        Command::Random(args) => random(&open(&config)?, &out, args),
        Command::Envelope(cmd) => envelope_cmd(&open(&config)?, &out, cmd),
        Command::Serve(args) if args.http_floor => {
            crate::api::serve_http_floor(args.listen.as_deref().unwrap_or(&config.server.listen))
        }
        Command::Serve(args) => crate::api::serve(&config, args.listen.as_deref()),
        Command::Bench(args) => crate::bench::run(args),
    }
}

/// Opens the token. CLI processes are short-lived: no background refresh is started.
fn open(config: &Config) -> Result<Kms> {
    explain_open(config, Kms::open(config))
}

fn explain_open(config: &Config, opened: Result<Kms>) -> Result<Kms> {
    opened.map_err(|e| match (&config.source, e) {
        // The commonest first-run mistake gets a pointer to the fix.
        (ConfigSource::Embedded(dir), KmsError::Config(m))
            if !EmbeddedToken {
                state_dir: dir.clone(),
            }
            .pin_path()
            .exists() =>
        {
            KmsError::Config(format!(
                "{m} (the embedded token in {} is not set up: run `p11kms token init`)",
                dir.display()
            ))
        }
        (_, e) => e,
    })
}

// ----- output ------------------------------------------------------------------------------

/// Where results go: stdout, as JSON or as readable text.
struct Out {
    json: bool,
}

impl Out {
    /// Prints `value` as JSON with `--json`, otherwise `text` (a trailing newline is added
    /// when missing).
    fn emit<T: Serialize>(&self, value: &T, text: &str) -> Result<()> {
        // Sized so that no response carrying a secret (at most 4096 bytes, base64) ever makes
        // the buffer reallocate and leave an unwiped copy behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(16 * 1024));
        if self.json {
            serde_json::to_writer_pretty(&mut *buf, value)
                .map_err(|e| KmsError::Internal(format!("serializing the response: {e}")))?;
            buf.push(b'\n');
        } else {
            buf.extend_from_slice(text.as_bytes());
            if !text.is_empty() && !text.ends_with('\n') {
                buf.push(b'\n');
            }
        }
        write_stdout(&buf)
    }
}

/// Writes to fd 1 directly: `io::stdout()` keeps a copy of what passes through its buffer,
/// which would include plaintexts.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let fd = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(stdout_err)?;
    File::from(fd).write_all(bytes).map_err(stdout_err)
}

/// The JSON of operations whose AWS response has no body.
#[derive(Serialize)]
struct Empty {}

fn stdout_err(e: io::Error) -> KmsError {
    KmsError::Io(format!("writing to stdout: {e}"))
}

fn io_err<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> KmsError + 'a {
    move |e| KmsError::Io(format!("{what} {}: {e}", path.display()))
}

/// Unix seconds as RFC 3339 (UTC); the raw number if out of range.
fn date(secs: f64) -> String {
    let nanos = (secs * 1e9) as i128;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn metadata_text(m: &KeyMetadata) -> String {
    let mut s = format!(
        "KeyId:        {}\nArn:          {}\nKeyState:     {}\nDescription:  {}\nCreationDate: {}\nKeySpec:      {}\nKeyUsage:     {}\n",
        m.key_id,
        m.arn,
        m.key_state,
        m.description,
        date(m.creation_date),
        m.key_spec,
        m.key_usage,
    );
    if let Some(d) = m.deletion_date {
        s.push_str(&format!("DeletionDate: {}\n", date(d)));
    }
    s
}

// ----- inputs ------------------------------------------------------------------------------

fn context(pairs: &[String]) -> Result<EncryptionContext> {
    EncryptionContext::from_pairs(pairs)
}

/// The request member: absent when no pairs were given.
fn context_member(ctx: &EncryptionContext) -> Option<ContextMap> {
    (!ctx.is_empty()).then(|| ctx.as_map().clone())
}

/// Reads at most `limit` bytes from `path` or stdin into a fixed, zeroizing buffer (never
/// grown, so no stray copies of a plaintext are left in freed memory).
fn read_bounded(path: Option<&Path>, limit: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; limit]);
    let n = match path {
        Some(p) => {
            let mut f = File::open(p).map_err(io_err("cannot open", p))?;
            read_full(&mut f, &mut buf).map_err(io_err("cannot read", p))?
        }
        None => {
            // fd 0 directly: `io::stdin()` would keep a copy in its internal buffer.
            let stdin_err = |e: io::Error| KmsError::Io(format!("cannot read stdin: {e}"));
            let fd = io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(stdin_err)?;
            read_full(&mut File::from(fd), &mut buf).map_err(stdin_err)?
        }
    };
    buf.truncate(n);
    Ok(buf)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A base64 ciphertext blob from a file or stdin; whitespace (line breaks) is ignored.
fn read_blob(path: Option<&Path>) -> Result<Bytes> {
    let text = read_bounded(path, MAX_BLOB_TEXT + 1)?;
    if text.len() > MAX_BLOB_TEXT {
        return Err(KmsError::Validation(format!(
            "the ciphertext blob input is larger than {MAX_BLOB_TEXT} bytes of base64"
        )));
    }
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err(KmsError::Validation(
            "no ciphertext blob given (expected base64 on stdin or in --blob-file)".into(),
        ));
    }
    B64.decode(&compact)
        .map(Bytes)
        .map_err(|_| KmsError::Validation("the ciphertext blob is not valid base64".into()))
}

/// Writes a plaintext to `path` (0600, atomically) or to stdout.
fn write_plaintext(path: Option<&Path>, data: &[u8]) -> Result<()> {
    match path {
        Some(p) => envelope::write_atomically(p, |f| {
            f.write_all(data).map_err(io_err("cannot write", p))?;
            Ok(data.len() as u64)
        })
        .map(|_| ()),
        None => write_stdout(data),
    }
}

// ----- token -------------------------------------------------------------------------------

/// A mechanism's flags as words.
fn mechanism_flags(m: &crate::hsm::MechanismSupport) -> (&'static str, String) {
    let flags: Vec<&str> = [
        (m.generate, "generate"),
        (m.encrypt, "encrypt"),
        (m.decrypt, "decrypt"),
        (m.wrap, "wrap"),
        (m.unwrap, "unwrap"),
        (m.derive, "derive"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| *name)
    .collect();
    let text = if !m.present {
        "absent".to_owned()
    } else if flags.is_empty() {
        "present (no relevant flags)".to_owned()
    } else {
        flags.join(" ")
    };
    (m.name, text)
}

fn token_init(config: &Config, so_pin_file: Option<&Path>, out: &Out) -> Result<()> {
    let dir = match (&config.source, so_pin_file) {
        (ConfigSource::Embedded(dir), None) => dir,
        (ConfigSource::Embedded(_), Some(_)) => {
            return Err(KmsError::Config(
                "--so-pin-file initialises the token a configuration file names; without \
                 --config or P11KMS_CONFIG, `token init` sets up the embedded token itself"
                    .into(),
            ))
        }
        (ConfigSource::File(path), None) => {
            return Err(KmsError::Config(format!(
                "`token init` only creates the embedded SoftHSMv2 token; {} names a token of \
                 its own: initialise real HSM tokens with the vendor's tools (software tokens \
                 such as Kryoptic: pass --so-pin-file)",
                path.display()
            )))
        }
        (ConfigSource::File(_), Some(so_pin_file)) => {
            return token_init_configured(config, so_pin_file, out)
        }
    };
    let outcome = crate::setup::init_embedded(dir)?;
    let mut text = format!("State directory: {}\n", dir.display());
    text.push_str(if outcome.files_created {
        "Created the state files (SoftHSM config, PINs, dev credential).\n"
    } else {
        "State files already exist.\n"
    });
    text.push_str(&if outcome.token_created {
        format!("Initialised token {:?}.\n", EmbeddedToken::LABEL)
    } else {
        format!("Token {:?} already exists.\n", EmbeddedToken::LABEL)
    });
    out.emit(&outcome, &text)
}

/// `token init --so-pin-file`: C_InitToken + C_InitPIN on the configured module's first free
/// slot, with the configured label and user PIN. Idempotent: an existing token is left alone.
fn token_init_configured(config: &Config, so_pin_file: &Path, out: &Out) -> Result<()> {
    let crate::config::TokenSelector::Label(label) = &config.token.selector else {
        return Err(KmsError::Config(
            "`token init` needs the token named by token.label, not token.slot".into(),
        ));
    };
    let so_pin = crate::config::SecretSource::File(so_pin_file.to_path_buf()).read()?;
    let user_pin = config.token.pin.read()?;
    // The module reads its environment (KRYOPTIC_CONF, SOFTHSM2_CONF) in C_Initialize.
    config.token.export_env();
    let token_created = crate::hsm::init_token(
        &config.token.module,
        label,
        so_pin.expose(),
        user_pin.expose(),
    )?;
    let outcome = crate::setup::InitOutcome {
        files_created: false,
        token_created,
    };
    let text = if token_created {
        format!(
            "Initialised token {label:?} in {}.\n",
            config.token.module.display()
        )
    } else {
        format!("Token {label:?} already exists.\n")
    };
    out.emit(&outcome, &text)
}

#[derive(Serialize)]
struct TokenInfo<'a> {
    config_source: &'static str,
    config_path: &'a Path,
    token: &'a crate::hsm::TokenDescription,
    capabilities: &'a crate::hsm::Capabilities,
    kdf: Option<&'static str>,
    in_token_sealing_possible: bool,
    custody: crate::kms::Custody,
    quirks: crate::hsm::Quirks,
    keys: usize,
    aliases: usize,
}

fn token_info(config: &Config, kms: &Kms, out: &Out) -> Result<()> {
    let (source, path) = match &config.source {
        ConfigSource::Embedded(dir) => ("embedded", dir.as_path()),
        ConfigSource::File(path) => ("file", path.as_path()),
    };
    let token = kms.token();
    let caps = token.capabilities();
    let keys = all_keys(kms)?.len();
    let aliases = all_aliases(kms, None)?.len();
    let info = TokenInfo {
        config_source: source,
        config_path: path,
        token: token.description(),
        capabilities: caps,
        kdf: caps.kdf.map(|k| k.name()),
        in_token_sealing_possible: caps.in_token_sealing(),
        custody: kms.custody(),
        quirks: token.quirks(),
        keys,
        aliases,
    };
    let d = info.token;
    let mut t = String::new();
    t.push_str(&match &config.source {
        ConfigSource::Embedded(dir) => format!(
            "Config:        embedded token, state dir {}\n",
            dir.display()
        ),
        ConfigSource::File(p) => format!("Config:        {}\n", p.display()),
    });
    t.push_str(&format!(
        "Module:        {}\nLibrary:       {} {} (Cryptoki {})\nSlot:          {}\nLabel:         {}\nManufacturer:  {}\nModel:         {}\nSerial:        {}\n",
        d.module, d.library, d.library_version, d.cryptoki_version, d.slot, d.label,
        d.manufacturer, d.model, d.serial
    ));
    t.push_str(&format!(
        "RNG:           {}\nMechanisms:\n",
        yes_no(caps.rng)
    ));
    for (name, flags) in [
        mechanism_flags(&caps.aes_key_gen),
        mechanism_flags(&caps.generic_secret_key_gen),
        mechanism_flags(&caps.aes_gcm),
        mechanism_flags(&caps.aes_cbc_encrypt_data),
        mechanism_flags(&caps.sp800_108_counter_kdf),
        mechanism_flags(&caps.aes_cmac),
    ] {
        t.push_str(&format!("  {name:<28} {flags}\n"));
    }
    let c = &info.custody;
    let dt = &c.derive_template;
    t.push_str(&format!(
        "KDF:           {}\nIn-token sealing (C_GenerateKey + C_WrapKey with CKM_AES_GCM): {}\n\
         Required:      {}\nDerive template: {}\nCustody (path; where plaintext exists):\n",
        info.kdf.unwrap_or("none"),
        match (&c.in_token_sealing_missing, c.data_keys_without_plaintext) {
            (None, crate::kms::SealingPath::Token) => "used".to_string(),
            (None, crate::kms::SealingPath::Host) => {
                "possible, but off (sealing = \"host\")".to_string()
            }
            (Some(why), _) => format!("not possible: {why}"),
        },
        match (c.in_token_sealing_required, c.data_keys_without_plaintext) {
            (false, _) => "no",
            (true, crate::kms::SealingPath::Token) => "yes (met)",
            (true, crate::kms::SealingPath::Host) =>
                "yes, NOT MET: `p11kms serve` refuses to start",
        },
        match (dt.enforced, dt.rewritable, dt.accepted) {
            (true, true, _) =>
                "CKA_DERIVE_TEMPLATE enforced and set on new CMKs; a PIN holder \
                                can still rewrite it (CMKs are modifiable)",
            (true, false, _) => "CKA_DERIVE_TEMPLATE enforced and set on new CMKs",
            (false, _, true) if dt.exposed_derivation_without_it => {
                "CKA_DERIVE_TEMPLATE accepted but not enforced: a PIN holder can derive a \
                 readable copy of an epoch key"
            }
            (false, _, false) if dt.exposed_derivation_without_it => {
                "CKA_DERIVE_TEMPLATE not supported: a PIN holder can derive a readable copy \
                 of an epoch key"
            }
            (false, _, _) =>
                "CKA_DERIVE_TEMPLATE not enforced (derived keys come out \
                              sensitive anyway)",
        },
    ));
    for line in c.lines() {
        t.push_str(&format!("  {line}\n"));
    }
    t.push_str(&format!(
        "Keys:          {keys}\nAliases:       {aliases}\n"
    ));
    out.emit(&info, &t)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

#[derive(Serialize)]
struct SweepReport {
    destroyed_keys: Vec<String>,
    orphan_cmks_waiting: usize,
}

fn token_sweep(kms: &Kms, out: &Out) -> Result<()> {
    // maintain() reports nothing, so what it will destroy is worked out first: keys pending
    // deletion whose date has passed, then checked against what is left afterwards.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut due = Vec::new();
    for k in all_keys(kms)? {
        let m = kms
            .describe_key(KeyIdRequest {
                key_id: Some(k.key_id.clone()),
                ..Default::default()
            })?
            .key_metadata;
        if m.key_state == crate::kms::KeyState::PendingDeletion
            && m.deletion_date.is_some_and(|d| d <= now)
        {
            due.push(m.arn);
        }
    }
    kms.maintain()?;
    let left: Vec<String> = all_keys(kms)?.into_iter().map(|k| k.key_arn).collect();
    let destroyed_keys: Vec<String> = due.into_iter().filter(|a| !left.contains(a)).collect();
    // With an infinite grace this only counts unreferenced CMKs; maintain() destroys them once
    // they have stayed unreferenced for its grace period within one process.
    let (_, orphan_cmks_waiting) = kms.sweep_orphan_cmks_after(Duration::MAX)?;
    let report = SweepReport {
        destroyed_keys,
        orphan_cmks_waiting,
    };
    let mut t = String::from("Refreshed metadata from the token.\n");
    t.push_str(&format!(
        "Destroyed {} key(s) past their deletion date.\n",
        report.destroyed_keys.len()
    ));
    for a in &report.destroyed_keys {
        t.push_str(&format!("  {a}\n"));
    }
    t.push_str(&format!(
        "Unreferenced key material (left by interrupted CreateKey calls): {}{}\n",
        report.orphan_cmks_waiting,
        if report.orphan_cmks_waiting > 0 {
            " (destroyed only after a grace period, by a long-running process such as the server)"
        } else {
            ""
        }
    ));
    out.emit(&report, &t)
}

// ----- keys --------------------------------------------------------------------------------

fn all_keys(kms: &Kms) -> Result<Vec<KeyListEntry>> {
    let mut keys = Vec::new();
    let mut marker = None;
    loop {
        let page = kms.list_keys(ListRequest {
            limit: Some(1000),
            marker: marker.take(),
            key_id: None,
        })?;
        keys.extend(page.keys);
        match page.next_marker {
            Some(m) if page.truncated => marker = Some(m),
            _ => return Ok(keys),
        }
    }
}

fn all_aliases(kms: &Kms, key: Option<String>) -> Result<Vec<AliasListEntry>> {
    let mut aliases = Vec::new();
    let mut marker = None;
    loop {
        let page = kms.list_aliases(ListRequest {
            limit: Some(1000),
            marker: marker.take(),
            key_id: key.clone(),
        })?;
        aliases.extend(page.aliases);
        match page.next_marker {
            Some(m) if page.truncated => marker = Some(m),
            _ => return Ok(aliases),
        }
    }
}

fn parse_tags(pairs: &[String]) -> Result<Option<Vec<Tag>>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| Tag {
                    tag_key: k.to_owned(),
                    tag_value: v.to_owned(),
                })
                .ok_or_else(|| KmsError::Validation(format!("tag {p:?} is not KEY=VALUE")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn key_req(key: String) -> KeyIdRequest {
    KeyIdRequest {
        key_id: Some(key),
        grant_tokens: None,
    }
}

fn key(kms: &Kms, out: &Out, cmd: KeyCmd) -> Result<()> {
    match cmd {
        KeyCmd::Create { description, tags } => {
            let r = kms.create_key(CreateKeyRequest {
                description,
                tags: parse_tags(&tags)?,
                ..Default::default()
            })?;
            out.emit(&r, &metadata_text(&r.key_metadata))
        }
        KeyCmd::List { limit, marker } => {
            let r = match limit {
                Some(_) => kms.list_keys(ListRequest {
                    limit,
                    marker,
                    key_id: None,
                })?,
                None => {
                    let mut r = kms.list_keys(ListRequest {
                        limit: Some(1000),
                        marker,
                        key_id: None,
                    })?;
                    while let (true, Some(m)) = (r.truncated, r.next_marker.take()) {
                        let next = kms.list_keys(ListRequest {
                            limit: Some(1000),
                            marker: Some(m),
                            key_id: None,
                        })?;
                        r.keys.extend(next.keys);
                        r.truncated = next.truncated;
                        r.next_marker = next.next_marker;
                    }
                    r
                }
            };
            let mut t: String = r
                .keys
                .iter()
                .map(|k| format!("{}\t{}\n", k.key_id, k.key_arn))
                .collect();
            if let Some(m) = r.next_marker.as_deref().filter(|_| r.truncated) {
                // On stderr so that stdout stays one key per line.
                eprintln!("(more keys: continue with --marker {m})");
            }
            if t.is_empty() {
                t = "No keys.\n".into();
            }
            out.emit(&r, &t)
        }
        KeyCmd::Describe { key } => {
            let r = kms.describe_key(key_req(key))?;
            out.emit(&r, &metadata_text(&r.key_metadata))
        }
        KeyCmd::Enable { key } => {
            kms.enable_key(key_req(key.clone()))?;
            out.emit(&Empty {}, &format!("Enabled {key}."))
        }
        KeyCmd::Disable { key } => {
            kms.disable_key(key_req(key.clone()))?;
            out.emit(&Empty {}, &format!("Disabled {key}."))
        }
        KeyCmd::ScheduleDeletion { key, days } => {
            let r = kms.schedule_key_deletion(ScheduleKeyDeletionRequest {
                key_id: Some(key),
                pending_window_in_days: days,
            })?;
            let t = format!(
                "KeyId:        {}\nKeyState:     {}\nDeletionDate: {} ({} days)\n",
                r.key_id,
                r.key_state,
                date(r.deletion_date),
                r.pending_window_in_days
            );
            out.emit(&r, &t)
        }
        KeyCmd::CancelDeletion { key } => {
            let r = kms.cancel_key_deletion(key_req(key))?;
            let t = format!(
                "Cancelled the deletion of {}; it is now Disabled (`p11kms key enable` to use it again).",
                r.key_id
            );
            out.emit(&r, &t)
        }
    }
}

// ----- aliases -----------------------------------------------------------------------------

fn alias_req(name: String, key: Option<String>) -> AliasRequest {
    AliasRequest {
        alias_name: Some(name),
        target_key_id: key,
    }
}

fn alias(kms: &Kms, out: &Out, cmd: AliasCmd) -> Result<()> {
    match cmd {
        AliasCmd::Create { name, key } => {
            kms.create_alias(alias_req(name.clone(), Some(key.clone())))?;
            out.emit(&Empty {}, &format!("Created {name} -> {key}."))
        }
        AliasCmd::Update { name, key } => {
            kms.update_alias(alias_req(name.clone(), Some(key.clone())))?;
            out.emit(&Empty {}, &format!("Updated {name} -> {key}."))
        }
        AliasCmd::Delete { name } => {
            kms.delete_alias(alias_req(name.clone(), None))?;
            out.emit(&Empty {}, &format!("Deleted {name}."))
        }
        AliasCmd::List { key, limit, marker } => {
            let r = match limit {
                Some(_) => kms.list_aliases(ListRequest {
                    limit,
                    marker,
                    key_id: key,
                })?,
                None if marker.is_none() => ListAliasesResponse {
                    aliases: all_aliases(kms, key)?,
                    next_marker: None,
                    truncated: false,
                },
                None => {
                    let mut r = kms.list_aliases(ListRequest {
                        limit: Some(1000),
                        marker,
                        key_id: key.clone(),
                    })?;
                    while let (true, Some(m)) = (r.truncated, r.next_marker.take()) {
                        let next = kms.list_aliases(ListRequest {
                            limit: Some(1000),
                            marker: Some(m),
                            key_id: key.clone(),
                        })?;
                        r.aliases.extend(next.aliases);
                        r.truncated = next.truncated;
                        r.next_marker = next.next_marker;
                    }
                    r
                }
            };
            let mut t: String = r
                .aliases
                .iter()
                .map(|a| format!("{}\t{}\n", a.alias_name, a.target_key_id))
                .collect();
            if let Some(m) = r.next_marker.as_deref().filter(|_| r.truncated) {
                eprintln!("(more aliases: continue with --marker {m})");
            }
            if t.is_empty() {
                t = "No aliases.\n".into();
            }
            out.emit(&r, &t)
        }
    }
}

// ----- cryptography ------------------------------------------------------------------------

fn datakey(kms: &Kms, out: &Out, args: DatakeyArgs) -> Result<()> {
    let ctx = context(&args.context)?;
    let key_spec = match (&args.spec, args.bytes) {
        (None, None) => Some("AES_256".to_owned()),
        (spec, _) => spec.clone(),
    };
    let req = GenerateDataKeyRequest {
        key_id: Some(args.key),
        encryption_context: context_member(&ctx),
        number_of_bytes: args.bytes,
        key_spec,
        ..Default::default()
    };
    if args.without_plaintext {
        let r = kms.generate_data_key_without_plaintext(req)?;
        let t = format!(
            "CiphertextBlob: {}\nKeyId: {}\n",
            B64.encode(&r.ciphertext_blob.0),
            r.key_id
        );
        out.emit(&r, &t)
    } else {
        let r = kms.generate_data_key(req)?;
        // Printing the data key is this command's job; the text is wiped after.
        let t = Zeroizing::new(format!(
            "CiphertextBlob: {}\nKeyId: {}\nPlaintext: {}\n",
            B64.encode(&r.ciphertext_blob.0),
            r.key_id,
            Zeroizing::new(B64.encode(r.plaintext.as_slice())).as_str()
        ));
        out.emit(&r, &t)
    }
}

fn encrypt(kms: &Kms, out: &Out, args: EncryptArgs) -> Result<()> {
    let ctx = context(&args.context)?;
    let plaintext = read_bounded(args.input.as_deref(), MAX_ENCRYPT_INPUT + 1)?;
    let r = kms.encrypt(EncryptRequest {
        key_id: Some(args.key),
        plaintext: Some(SecretBytes(plaintext)),
        encryption_context: context_member(&ctx),
        ..Default::default()
    })?;
    out.emit(&r, &B64.encode(&r.ciphertext_blob.0))
}

/// DecryptResponse without the plaintext, for `decrypt --out F --json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DecryptedToFile<'a> {
    key_id: &'a str,
    encryption_algorithm: &'a str,
}

fn decrypt(kms: &Kms, out: &Out, args: DecryptArgs) -> Result<()> {
    let ctx = context(&args.context)?;
    let blob = read_blob(args.blob_file.as_deref())?;
    let r = kms.decrypt(DecryptRequest {
        ciphertext_blob: Some(blob),
        encryption_context: context_member(&ctx),
        key_id: args.key,
        ..Default::default()
    })?;
    match (&args.out, out.json) {
        (None, true) => out.emit(&r, ""),
        (None, false) => write_plaintext(None, r.plaintext.as_slice()),
        (Some(path), json) => {
            write_plaintext(Some(path), r.plaintext.as_slice())?;
            if json {
                out.emit(
                    &DecryptedToFile {
                        key_id: &r.key_id,
                        encryption_algorithm: crate::kms::AwsEnum::as_str(r.encryption_algorithm),
                    },
                    "",
                )
            } else {
                Ok(())
            }
        }
    }
}

fn reencrypt(kms: &Kms, out: &Out, args: ReencryptArgs) -> Result<()> {
    let src = context(&args.context)?;
    let dst = context(&args.dest_context)?;
    let blob = read_blob(args.blob_file.as_deref())?;
    let r = kms.re_encrypt(ReEncryptRequest {
        ciphertext_blob: Some(blob),
        source_encryption_context: context_member(&src),
        source_key_id: args.source_key,
        destination_key_id: Some(args.key),
        destination_encryption_context: context_member(&dst),
        ..Default::default()
    })?;
    out.emit(&r, &B64.encode(&r.ciphertext_blob.0))
}

fn random(kms: &Kms, out: &Out, args: RandomArgs) -> Result<()> {
    let r = kms.generate_random(GenerateRandomRequest {
        number_of_bytes: Some(args.bytes),
        ..Default::default()
    })?;
    let t = Zeroizing::new(B64.encode(r.plaintext.as_slice()));
    out.emit(&r, &t)
}

// ----- envelope files ----------------------------------------------------------------------

#[derive(Serialize)]
struct EnvelopeReport<'a> {
    key_id: &'a str,
    bytes: u64,
    input: &'a Path,
    output: &'a Path,
}

/// Copies a data key into a fixed-size zeroizing array; anything but 32 bytes is not ours.
fn data_key(plaintext: SecretBytes) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>> {
    let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
    if plaintext.as_slice().len() != DATA_KEY_LEN {
        return Err(KmsError::InvalidCiphertext(
            "the envelope's data key is not a 32-byte AES-256 key".into(),
        ));
    }
    key.copy_from_slice(plaintext.as_slice());
    Ok(key)
}

/// An optional progress bar on stderr: only for a terminal and a large file.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(total: u64) -> Progress {
        if total < PROGRESS_MIN_BYTES || !io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    fn set(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.set_position(n);
        }
    }

    fn finish(self) {
        if let Some(b) = self.0 {
            b.finish_and_clear();
        }
    }
}

fn envelope_cmd(kms: &Kms, out: &Out, cmd: EnvelopeCmd) -> Result<()> {
    match cmd {
        EnvelopeCmd::Encrypt {
            key,
            input,
            out: output,
            context: pairs,
            without_plaintext,
        } => {
            let ctx = context(&pairs)?;
            // Open the input first: a missing file should not cost a data key.
            let file = File::open(&input).map_err(io_err("cannot open", &input))?;
            let total = file.metadata().map_or(0, |m| m.len());
            let req = GenerateDataKeyRequest {
                key_id: Some(key),
                encryption_context: context_member(&ctx),
                key_spec: Some("AES_256".into()),
                ..Default::default()
            };
            let (blob, key_arn, dk) = if without_plaintext {
                // The two-component flow: one component stores the blob, another decrypts it.
                let g = kms.generate_data_key_without_plaintext(req)?;
                let d = kms.decrypt(DecryptRequest {
                    ciphertext_blob: Some(g.ciphertext_blob.clone()),
                    encryption_context: context_member(&ctx),
                    key_id: Some(g.key_id.clone()),
                    ..Default::default()
                })?;
                (g.ciphertext_blob.0, g.key_id, data_key(d.plaintext)?)
            } else {
                let g = kms.generate_data_key(req)?;
                (g.ciphertext_blob.0, g.key_id, data_key(g.plaintext)?)
            };
            let header = envelope::Header::new(blob, ctx.as_map().clone())?;
            let progress = Progress::new(total);
            let written = envelope::write_atomically(&output, |f| {
                envelope::encrypt_stream(&dk, &header, file, f, &mut |n| progress.set(n))
            });
            // The data key is needed no longer than the stream.
            drop(dk);
            progress.finish();
            let bytes = written?;
            let report = EnvelopeReport {
                key_id: &key_arn,
                bytes,
                input: &input,
                output: &output,
            };
            let t = format!(
                "Encrypted {bytes} bytes from {} into {} under {key_arn}.",
                input.display(),
                output.display()
            );
            out.emit(&report, &t)
        }
        EnvelopeCmd::Decrypt {
            input,
            out: output,
            context: pairs,
        } => {
            let required = context(&pairs)?;
            let mut file = File::open(&input).map_err(io_err("cannot open", &input))?;
            let total = file.metadata().map_or(0, |m| m.len());
            let header = envelope::Header::read_from(&mut file)?;
            for (k, v) in required.as_map() {
                if header.context.get(k) != Some(v) {
                    return Err(KmsError::InvalidCiphertext(format!(
                        "the envelope's encryption context does not have {k:?} = {v:?} as --context requires"
                    )));
                }
            }
            let d = kms.decrypt(DecryptRequest {
                ciphertext_blob: Some(Bytes(header.blob.clone())),
                encryption_context: Some(header.context.clone()),
                ..Default::default()
            })?;
            let key_arn = d.key_id.clone();
            let dk = data_key(d.plaintext)?;
            let progress = Progress::new(total);
            let written = envelope::write_atomically(&output, |f| {
                envelope::decrypt_stream(&dk, &header, &mut file, f, &mut |n| progress.set(n))
            });
            drop(dk);
            progress.finish();
            let bytes = written?;
            let report = EnvelopeReport {
                key_id: &key_arn,
                bytes,
                input: &input,
                output: &output,
            };
            let t = format!(
                "Decrypted {bytes} bytes from {} into {} under {key_arn}.",
                input.display(),
                output.display()
            );
            out.emit(&report, &t)
        }
    }
}
