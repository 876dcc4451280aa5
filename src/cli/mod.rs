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
//!
//! Rooms: `args` is the command line's shape, `output` and `input` what commands print and
//! read, `token`, `keys`, `grants`, `crypto`, `asymmetric` (signatures, public keys, MACs)
//! and `envelope` the commands themselves, and [`paging`] every page of the list operations.

mod args;
mod asymmetric;
mod audit;
mod crypto;
mod custody;
mod envelope;
mod grants;
mod input;
mod keys;
mod output;
pub(crate) mod paging;
mod token;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{Config, ConfigSource, EmbeddedToken, LogFormat};
use crate::error::{KmsError, Result};
use crate::kms::Kms;
use args::{AuditCmd, Cli, Command, Configured, CustodyCmd, DatakeyCmd, TokenCmd};
use output::Out;

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
    // `serve --log-format` picks the format from the first line on; a configured
    // `log_format` is applied once the configuration is read (see `set_log_format`).
    let format = match &cli.command {
        Command::Configured(Configured::Serve(a)) => a.log_format,
        _ => None,
    };
    init_logging(format.unwrap_or_default());
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e, json);
            ExitCode::FAILURE
        }
    }
}

type LogBase =
    tracing_subscriber::layer::Layered<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;
type LogLayer = Box<dyn tracing_subscriber::Layer<LogBase> + Send + Sync>;

/// Swaps the format of the installed log layer (`serve`'s configured `log_format`).
static LOG_FORMAT: std::sync::OnceLock<tracing_subscriber::reload::Handle<LogLayer, LogBase>> =
    std::sync::OnceLock::new();

fn log_layer(format: LogFormat) -> LogLayer {
    use tracing_subscriber::Layer as _;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_target(true);
    match format {
        LogFormat::Text => layer.boxed(),
        // One object per line, the event's fields at the top level beside `timestamp`,
        // `level` and `target`, and the request span's id.
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    }
}

/// Logs to stderr, filtered by `P11KMS_LOG` (`tracing` filter syntax, e.g. `info` or
/// `p11kms=debug`; default `warn`), as text or JSON lines. Nothing secret is ever logged.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("P11KMS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let (layer, handle) = tracing_subscriber::reload::Layer::new(log_layer(format));
    if tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .is_ok()
    {
        let _ = LOG_FORMAT.set(handle);
    }
}

/// Switches the log lines to `format` from now on.
fn set_log_format(format: LogFormat) {
    if let Some(h) = LOG_FORMAT.get() {
        let _ = h.reload(log_layer(format));
    }
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
    match cli.command {
        // The bench makes its own token and ignores the configured one.
        #[cfg(feature = "bench")]
        Command::Bench(args) => crate::bench::run(args),
        Command::Configured(command) => run_configured(cli.config, cli.json, command),
    }
}

fn run_configured(path: Option<PathBuf>, json: bool, command: Configured) -> Result<()> {
    // An empty P11KMS_CONFIG means "not set", as Config::resolve reads it.
    let path = path.filter(|p| !p.as_os_str().is_empty());
    let config = Config::resolve(path.as_deref())?;
    let out = Out::new(json);
    let audited = audit::event(&command);
    let result = run_command(&config, &out, command);
    match audited {
        Some((op, params)) => {
            let written =
                audit::write(&config, op, params, result.as_ref().err(), &out.keys_made());
            // The command's own failure comes first; a lost record fails a command that did.
            result.and(written)
        }
        None => result,
    }
}

fn run_command(config: &Config, out: &Out, command: Configured) -> Result<()> {
    let config = config.clone();
    match command {
        Configured::Custody(CustodyCmd::Report) => custody::report(&open(&config)?, out),
        Configured::Custody(CustodyCmd::Verify { file }) => {
            custody::verify(&open(&config)?, &file, out)
        }
        Configured::Audit(AuditCmd::Verify { files, no_token }) => {
            if audit::verify(&config, &files, no_token, out)? {
                Ok(())
            } else {
                // Verified but not closed: neither a pass nor a forgery.
                std::process::exit(2)
            }
        }
        Configured::Token(TokenCmd::Init { so_pin_file }) => {
            token::token_init(&config, so_pin_file.as_deref(), out)
        }
        // Unenforced: `token info` must be able to say why a token fails
        // require_in_token_sealing.
        Configured::Token(TokenCmd::Info) => token::token_info(
            &config,
            &explain_open(&config, crate::app::open_unenforced(&config))?,
            out,
        ),
        Configured::Token(TokenCmd::Sweep) => token::token_sweep(&open(&config)?, out),
        Configured::Key(cmd) => keys::key(&open(&config)?, out, cmd),
        Configured::Alias(cmd) => keys::alias(&open(&config)?, out, cmd),
        Configured::Grant(cmd) => grants::grant(&open(&config)?, out, cmd),
        Configured::Datakey(DatakeyCmd::Generate(args)) => {
            crypto::datakey(&open(&config)?, out, args)
        }
        Configured::DatakeyPair(args) => crypto::datakey_pair(&open(&config)?, out, args),
        Configured::Encrypt(args) => crypto::encrypt(&open(&config)?, out, args),
        Configured::Decrypt(args) => crypto::decrypt(&open(&config)?, out, args),
        Configured::Reencrypt(args) => crypto::reencrypt(&open(&config)?, out, args),
        Configured::Random(args) => crypto::random(&open(&config)?, out, args),
        Configured::Sign(args) => asymmetric::sign(&open(&config)?, out, args),
        Configured::Verify(args) => asymmetric::verify(&open(&config)?, out, args),
        Configured::PublicKey(args) => asymmetric::public_key(&open(&config)?, out, args),
        Configured::Mac(cmd) => asymmetric::mac(&open(&config)?, out, cmd),
        Configured::Envelope(cmd) => envelope::envelope_cmd(&open(&config)?, out, cmd),
        Configured::Serve(args) if args.http_floor => {
            crate::api::serve_http_floor(args.listen.as_deref().unwrap_or(&config.server.listen))
        }
        Configured::Healthcheck { address } => crate::api::healthcheck(&config, address.as_deref()),
        Configured::Serve(args) => {
            let mut config = config;
            let format = args.log_format.unwrap_or(config.server.log_format);
            if format != LogFormat::Text {
                set_log_format(format);
            }
            config.server.log_format = format;
            crate::api::serve(
                &config,
                args.listen.as_deref(),
                args.ci,
                args.seed.as_deref(),
            )
        }
        Configured::Seed { file, account } => {
            let account = match account {
                Some(a) => a,
                None => crate::api::ci_account(&config)?,
            };
            let kms = open(&config)?;
            let r = crate::seed::seed_file(&kms, &file, &account, &config.region)?;
            #[derive(serde::Serialize)]
            #[serde(rename_all = "PascalCase")]
            struct SeedOut {
                created: Vec<String>,
                existing: Vec<String>,
                aliases: Vec<String>,
            }
            let text = format!(
                "Created {} keys and {} aliases; {} keys existed already.\n",
                r.created.len(),
                r.aliases.len(),
                r.existing.len()
            );
            out.emit(
                &SeedOut {
                    created: r.created.iter().map(|k| k.to_string()).collect(),
                    existing: r.existing.iter().map(|k| k.to_string()).collect(),
                    aliases: r.aliases,
                },
                &text,
            )
        }
    }
}

/// Opens the token. CLI processes are short-lived: no background refresh is started.
fn open(config: &Config) -> Result<Kms> {
    explain_open(config, crate::app::open(config))
}

fn explain_open(config: &Config, opened: Result<Kms>) -> Result<Kms> {
    opened.map_err(|e| match (&config.source, e) {
        // The commonest first-run mistake gets a pointer to the fix.
        (ConfigSource::Embedded(dir), e)
            if e.kind() == crate::error::ErrorKind::Config
                && !EmbeddedToken {
                    state_dir: dir.clone(),
                }
                .pin_path()
                .exists() =>
        {
            KmsError::config(format!(
                "{} (the embedded token in {} is not set up: run `p11kms token init`)",
                e.message(),
                dir.display()
            ))
        }
        (_, e) => e,
    })
}
