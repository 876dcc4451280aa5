//! The command line's shape: the clap structures of every subcommand and option.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "p11kms",
    version,
    about = "An AWS KMS-compatible key service whose master keys live in a PKCS#11 token",
    after_help = "Without --config or P11KMS_CONFIG, p11kms uses its embedded SoftHSMv2 token \
                  in P11KMS_STATE_DIR (default ./var); create it with `p11kms token init`."
)]
pub(super) struct Cli {
    /// TOML configuration file (default: the embedded SoftHSMv2 token).
    #[arg(long, global = true, env = "P11KMS_CONFIG", value_name = "PATH")]
    pub(super) config: Option<PathBuf>,

    /// Machine-readable output: the operation's response as JSON, with AWS field names.
    #[arg(long, global = true)]
    pub(super) json: bool,

    #[command(subcommand)]
    pub(super) command: Command,
}

/// Every subcommand: the bench makes its own token; all others use the configured one.
#[derive(Subcommand)]
pub(super) enum Command {
    // Flattened: its subcommands are listed as `p11kms`'s own.
    #[command(flatten)]
    Configured(Configured),
    #[cfg(feature = "bench")]
    /// Measure throughput and latency against the token's own ceiling (on a fresh temporary
    /// token; writes BENCHMARKS.md).
    Bench(crate::bench::BenchArgs),
}

/// The subcommands that work on the configured token.
#[derive(Subcommand)]
pub(super) enum Configured {
    /// Set up, describe and maintain the token.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Manage KMS keys (CreateKey, ListKeys, DescribeKey, ...).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Manage aliases (CreateAlias, UpdateAlias, DeleteAlias, ListAliases).
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Manage grants (CreateGrant, ListGrants, RetireGrant, RevokeGrant).
    #[command(subcommand)]
    Grant(GrantCmd),
    /// Data keys (GenerateDataKey, GenerateDataKeyWithoutPlaintext).
    #[command(subcommand)]
    Datakey(DatakeyCmd),
    /// A data key pair, its private key sealed under a symmetric key (GenerateDataKeyPair,
    /// GenerateDataKeyPairWithoutPlaintext).
    DatakeyPair(DatakeyPairArgs),
    /// Encrypt up to 4096 bytes from a file or stdin (RSA keys: up to 190 to 470 bytes, by
    /// key size and algorithm); prints the base64 ciphertext blob.
    Encrypt(EncryptArgs),
    /// Decrypt a base64 ciphertext blob; writes the raw plaintext. RSA ciphertexts need --key
    /// and --algorithm.
    Decrypt(DecryptArgs),
    /// Re-encrypt a base64 ciphertext blob under another key.
    Reencrypt(ReencryptArgs),
    /// Random bytes from the token's RNG (GenerateRandom), base64.
    Random(RandomArgs),
    /// Sign a message of 1 to 4096 bytes (or its digest) from a file or stdin with an
    /// asymmetric SIGN_VERIFY key (Sign); prints the base64 signature.
    Sign(SignArgs),
    /// Verify a signature (Verify): prints `valid`, or fails with
    /// KMSInvalidSignatureException.
    Verify(VerifyArgs),
    /// The public key of an asymmetric key (GetPublicKey): its DER SubjectPublicKeyInfo,
    /// base64, or PEM with --pem.
    PublicKey(PublicKeyArgs),
    /// HMACs made and checked in the token (GenerateMac, VerifyMac).
    #[command(subcommand)]
    Mac(MacCmd),
    /// Encrypt or decrypt files of any size under a data key (client-side envelope format).
    #[command(subcommand)]
    Envelope(EnvelopeCmd),
    /// Serve the AWS KMS JSON API over HTTP (or HTTPS when a certificate is configured).
    Serve(ServeArgs),
    /// The audit trail (docs/audit.md).
    #[command(subcommand)]
    Audit(AuditCmd),
    /// For auditors: what proves the token holds each key (docs/audit.md).
    #[command(subcommand)]
    Custody(CustodyCmd),
    /// Ask a running server's `/healthz` (plain HTTP: the metrics listener when
    /// `metrics_listen` is set, else the main one); exit 0 if it answers 200 within 3 s.
    /// For container health checks (no curl needed).
    Healthcheck {
        /// `host:port` to ask (default: `metrics_listen`, else `server.listen`; a wildcard
        /// address is asked on loopback).
        #[arg(long)]
        address: Option<String>,
    },
    /// Create keys and aliases with fixed ids from a TOML seed file (`[[key]]` tables: id,
    /// spec, usage, description, aliases, tags, region); existing ones are left alone.
    Seed {
        file: PathBuf,
        /// The account of the keys (default: the configuration's, or P11KMS_ACCOUNT).
        #[arg(long)]
        account: Option<String>,
    },
}

#[derive(Args)]
pub(super) struct ServeArgs {
    /// Address to listen on (overrides the config and P11KMS_LISTEN), e.g. 127.0.0.1:4599.
    #[arg(long)]
    pub(super) listen: Option<String>,
    /// CI mode, for test suites written for moto or LocalStack: any access key id and secret
    /// are accepted (the signature's shape and time are still checked), any region; the
    /// account is `account` of the config or P11KMS_ACCOUNT. Only on a loopback address.
    #[arg(long)]
    pub(super) ci: bool,
    /// Before serving, create the keys and aliases of this seed file that do not exist yet
    /// (fixed ids; see `p11kms seed`).
    #[arg(long, value_name = "FILE")]
    pub(super) seed: Option<PathBuf>,
    /// For `p11kms bench`: serve a fixed answer to every request (no SigV4, no token), with
    /// the same runtime and connection settings: the HTTP floor.
    #[arg(long, hide = true)]
    pub(super) http_floor: bool,
    /// Log lines as `text` (default) or `json` (one object per line; overrides the
    /// configuration's `server.log_format`).
    #[arg(long, value_name = "FORMAT", value_parser = parse_log_format)]
    pub(super) log_format: Option<crate::config::LogFormat>,
}

fn parse_log_format(s: &str) -> Result<crate::config::LogFormat, String> {
    crate::config::LogFormat::parse(s).ok_or_else(|| format!("`{s}` is neither text nor json"))
}

#[derive(Subcommand)]
pub(super) enum TokenCmd {
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
pub(super) enum KeyCmd {
    /// Create a key in the token (CreateKey): a symmetric AES-256 key unless --spec says
    /// otherwise.
    Create {
        /// Free text shown by `key describe`.
        #[arg(long)]
        description: Option<String>,
        /// KeySpec: SYMMETRIC_DEFAULT (default), RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256,
        /// ECC_NIST_P384, ECC_NIST_P521, ECC_SECG_P256K1, ECC_NIST_EDWARDS25519, HMAC_224,
        /// HMAC_256, HMAC_384 or HMAC_512 (`token info` lists what this token offers).
        #[arg(long)]
        spec: Option<String>,
        /// KeyUsage: ENCRYPT_DECRYPT (default, as at AWS), SIGN_VERIFY, GENERATE_VERIFY_MAC
        /// (HMAC keys) or KEY_AGREEMENT.
        #[arg(long)]
        usage: Option<String>,
        /// A tag as KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// The key policy, a JSON file (default: AWS's default key policy).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// A multi-Region primary key (`mrk-` id), to replicate with `key replicate`.
        #[arg(long)]
        multi_region: bool,
    },
    /// Replicate a multi-Region primary key into another region (ReplicateKey).
    Replicate {
        key: String,
        /// The replica's region.
        #[arg(long)]
        region: String,
        /// The replica's description.
        #[arg(long)]
        description: Option<String>,
        /// A tag of the replica as KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// The replica's key policy, a JSON file (default: AWS's default key policy).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
    },
    /// Make the replica of a multi-Region key in --region its primary (UpdatePrimaryRegion).
    UpdatePrimary {
        key: String,
        /// The region of the replica that becomes the primary key.
        #[arg(long)]
        region: String,
    },
    /// Print a key's policy (GetKeyPolicy).
    Policy { key: String },
    /// Replace a key's policy (PutKeyPolicy) with a JSON file. As the token's operator, no
    /// lockout safety check applies: this is how a key whose policy locks everyone out is
    /// recovered.
    PutPolicy {
        key: String,
        #[arg(value_name = "FILE")]
        file: PathBuf,
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
    /// Rotate a symmetric key's material now (RotateKeyOnDemand), and complete the rotation
    /// in this process (a server's upkeep may complete it first); prints the new material id.
    Rotate { key: String },
    /// Show whether and when a key rotates (GetKeyRotationStatus).
    RotationStatus { key: String },
    /// List a key's key materials (ListKeyRotations, ALL_KEY_MATERIAL), all pages.
    Rotations { key: String },
    /// Turn on automatic rotation (EnableKeyRotation), every 90 to 2560 days (default 365).
    EnableRotation {
        key: String,
        /// Days between rotations (90 to 2560).
        #[arg(long, value_name = "DAYS")]
        period: Option<i64>,
    },
    /// Turn off automatic rotation (DisableKeyRotation).
    DisableRotation { key: String },
}

#[derive(Subcommand)]
pub(super) enum AliasCmd {
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
pub(super) enum GrantCmd {
    /// Create a grant (CreateGrant), issued by the configured account; prints its id and a
    /// grant token.
    Create {
        /// The KMS key (key id or key ARN).
        key: String,
        /// Who the grant is for (an IAM or STS principal ARN).
        #[arg(long)]
        grantee: String,
        /// An operation the grant allows (AWS names, e.g. Decrypt); repeat for several.
        #[arg(long = "operation", required = true)]
        operations: Vec<String>,
        /// Who may retire the grant (a principal ARN).
        #[arg(long)]
        retiring: Option<String>,
        /// A name: a retry with the same name and parameters returns the same grant.
        #[arg(long)]
        name: Option<String>,
        /// EncryptionContextEquals constraint pair KEY=VALUE; repeat for several.
        #[arg(long = "context-equals", value_name = "KEY=VALUE")]
        context_equals: Vec<String>,
        /// EncryptionContextSubset constraint pair KEY=VALUE; repeat for several.
        #[arg(long = "context-subset", value_name = "KEY=VALUE")]
        context_subset: Vec<String>,
    },
    /// List a key's grants (ListGrants). Without --limit, all pages.
    List {
        /// The KMS key (key id or key ARN).
        key: String,
        /// Only grants for this grantee principal.
        #[arg(long)]
        grantee: Option<String>,
        /// Only the grant with this id.
        #[arg(long)]
        grant_id: Option<String>,
        /// One page of at most this many grants (1 to 100).
        #[arg(long)]
        limit: Option<i64>,
        /// Start after this grant (NextMarker of the previous page).
        #[arg(long)]
        marker: Option<String>,
    },
    /// Retire a grant (RetireGrant): by --token, or by --key and --grant-id.
    Retire {
        /// A grant token of the grant.
        #[arg(long, conflicts_with_all = ["key", "grant_id"])]
        token: Option<String>,
        /// The KMS key of the grant (key id or key ARN).
        #[arg(long, requires = "grant_id")]
        key: Option<String>,
        /// The grant's id.
        #[arg(long, requires = "key")]
        grant_id: Option<String>,
    },
    /// Revoke a grant (RevokeGrant).
    Revoke {
        /// The KMS key (key id or key ARN).
        key: String,
        /// The grant's id.
        grant_id: String,
    },
}

#[derive(Subcommand)]
pub(super) enum DatakeyCmd {
    /// Generate a data key (default AES_256).
    Generate(DatakeyArgs),
}

#[derive(Args)]
pub(super) struct DatakeyArgs {
    /// The KMS key (id, ARN, alias name or alias ARN).
    #[arg(long)]
    pub(super) key: String,
    /// Only the ciphertext blob (GenerateDataKeyWithoutPlaintext).
    #[arg(long)]
    pub(super) without_plaintext: bool,
    /// AES_256 or AES_128.
    #[arg(long, conflicts_with = "bytes")]
    pub(super) spec: Option<String>,
    /// Data key length in bytes (1 to 1024), instead of --spec.
    #[arg(long)]
    pub(super) bytes: Option<i64>,
    /// Encryption context pair (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub(super) context: Vec<String>,
}

#[derive(Args)]
pub(super) struct DatakeyPairArgs {
    /// The symmetric KMS key that seals the private key (id, ARN, alias name or alias ARN).
    #[arg(long)]
    pub(super) key: String,
    /// KeyPairSpec: RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384,
    /// ECC_NIST_P521, ECC_SECG_P256K1 or ECC_NIST_EDWARDS25519.
    #[arg(long)]
    pub(super) spec: String,
    /// Only the sealed private key and the public key (GenerateDataKeyPairWithoutPlaintext).
    #[arg(long)]
    pub(super) without_plaintext: bool,
    /// Encryption context pair (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub(super) context: Vec<String>,
}

#[derive(Args)]
pub(super) struct EncryptArgs {
    /// The KMS key (key id, key ARN, alias name or alias ARN).
    #[arg(long)]
    pub(super) key: String,
    /// Plaintext file (default: stdin).
    #[arg(long = "in", value_name = "FILE")]
    pub(super) input: Option<PathBuf>,
    /// Encryption context pair (repeatable; symmetric keys only).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub(super) context: Vec<String>,
    /// EncryptionAlgorithm: SYMMETRIC_DEFAULT (default), or RSAES_OAEP_SHA_1 or
    /// RSAES_OAEP_SHA_256 with an RSA ENCRYPT_DECRYPT key.
    #[arg(long)]
    pub(super) algorithm: Option<String>,
}

#[derive(Args)]
pub(super) struct DecryptArgs {
    /// File with the base64 ciphertext blob (default: stdin).
    #[arg(long, value_name = "FILE")]
    pub(super) blob_file: Option<PathBuf>,
    /// Refuse the blob unless it is under this key (required for an RSA ciphertext: the key
    /// that decrypts it).
    #[arg(long)]
    pub(super) key: Option<String>,
    /// The blob's encryption context pair (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub(super) context: Vec<String>,
    /// EncryptionAlgorithm the blob was made with: SYMMETRIC_DEFAULT (default),
    /// RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256.
    #[arg(long)]
    pub(super) algorithm: Option<String>,
    /// Write the plaintext here (mode 0600, replaced atomically) instead of stdout. With --json
    /// the printed response then leaves out Plaintext.
    #[arg(long, value_name = "FILE")]
    pub(super) out: Option<PathBuf>,
}

#[derive(Args)]
pub(super) struct ReencryptArgs {
    /// The destination key.
    #[arg(long)]
    pub(super) key: String,
    /// Refuse the blob unless it is under this key.
    #[arg(long)]
    pub(super) source_key: Option<String>,
    /// File with the base64 ciphertext blob (default: stdin).
    #[arg(long, value_name = "FILE")]
    pub(super) blob_file: Option<PathBuf>,
    /// The blob's encryption context pair (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub(super) context: Vec<String>,
    /// The new blob's encryption context pair (repeatable).
    #[arg(long = "dest-context", value_name = "KEY=VALUE")]
    pub(super) dest_context: Vec<String>,
    /// EncryptionAlgorithm of the blob (an RSA ciphertext also needs --source-key).
    #[arg(long, value_name = "ALGORITHM")]
    pub(super) source_algorithm: Option<String>,
    /// EncryptionAlgorithm of the new blob (RSAES_OAEP_* for an RSA destination key).
    #[arg(long, value_name = "ALGORITHM")]
    pub(super) dest_algorithm: Option<String>,
}

#[derive(Args)]
pub(super) struct SignArgs {
    /// The SIGN_VERIFY key (key id, key ARN, alias name or alias ARN).
    #[arg(long)]
    pub(super) key: String,
    /// SigningAlgorithm, one the key lists (`key describe`): RSASSA_PSS_SHA_256|384|512,
    /// RSASSA_PKCS1_V1_5_SHA_256|384|512, ECDSA_SHA_256|384|512, ED25519_SHA_512,
    /// ED25519_PH_SHA_512.
    #[arg(long)]
    pub(super) algorithm: String,
    /// RAW (default): the input is the message, hashed here. DIGEST: the input is the
    /// message's digest (raw bytes, as long as the algorithm's hash).
    #[arg(long, value_name = "RAW|DIGEST")]
    pub(super) message_type: Option<String>,
    /// Message file (default: stdin).
    #[arg(long = "in", value_name = "FILE")]
    pub(super) input: Option<PathBuf>,
}

#[derive(Args)]
pub(super) struct VerifyArgs {
    #[command(flatten)]
    pub(super) message: SignArgs,
    /// File with the base64 signature (as `p11kms sign` prints it).
    #[arg(long, value_name = "FILE")]
    pub(super) signature_file: PathBuf,
}

#[derive(Args)]
pub(super) struct PublicKeyArgs {
    /// The asymmetric key (key id, key ARN, alias name or alias ARN).
    #[arg(long)]
    pub(super) key: String,
    /// PEM (`-----BEGIN PUBLIC KEY-----`, 64 characters a line) instead of base64 DER.
    #[arg(long)]
    pub(super) pem: bool,
    /// Write the key here instead of stdout: the DER bytes, or the PEM text with --pem (mode
    /// 0644, replaced atomically). With --json the response is printed as well.
    #[arg(long, value_name = "FILE")]
    pub(super) out: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(super) enum MacCmd {
    /// The HMAC of a message of 1 to 4096 bytes from a file or stdin (GenerateMac), base64.
    Generate(MacArgs),
    /// Check an HMAC (VerifyMac): prints `valid`, or fails with KMSInvalidMacException.
    Verify(MacVerifyArgs),
}

#[derive(Args)]
pub(super) struct MacArgs {
    /// The HMAC key (GENERATE_VERIFY_MAC; key id, key ARN, alias name or alias ARN).
    #[arg(long)]
    pub(super) key: String,
    /// MacAlgorithm, the key's: HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512.
    #[arg(long)]
    pub(super) algorithm: String,
    /// Message file (default: stdin).
    #[arg(long = "in", value_name = "FILE")]
    pub(super) input: Option<PathBuf>,
}

#[derive(Args)]
pub(super) struct MacVerifyArgs {
    #[command(flatten)]
    pub(super) message: MacArgs,
    /// File with the base64 MAC (as `p11kms mac generate` prints it).
    #[arg(long, value_name = "FILE")]
    pub(super) mac_file: PathBuf,
}

#[derive(Args)]
pub(super) struct RandomArgs {
    /// Number of bytes (1 to 1024).
    #[arg(long)]
    pub(super) bytes: i64,
}

#[derive(Subcommand)]
pub(super) enum EnvelopeCmd {
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

#[derive(Subcommand)]
pub(super) enum AuditCmd {
    /// Check audit files: every line's hash chain and every checkpoint's MAC (in the token).
    /// Names the first line that was changed, removed, reordered or truncated. Exit 0: all
    /// verified and closed; 2: verified, but a file ends without its closing checkpoint
    /// (its process stopped, or the file was cut at a line boundary); 1: it does not verify.
    Verify {
        /// Audit files, in order (consecutive parts of one stream must chain).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Check the hash chain only, without the token (checkpoints' MACs unchecked).
        #[arg(long)]
        no_token: bool,
    },
}

#[derive(Subcommand)]
pub(super) enum CustodyCmd {
    /// Per key, the token attributes that prove custody (CKA_LOCAL, NEVER_EXTRACTABLE,
    /// ALWAYS_SENSITIVE, usages, allowed mechanisms), the sealing path per operation, the
    /// token's model and firmware. With --json, the report MACed by the audit key.
    Report,
    /// Check a saved `custody report --json` against this token's audit key.
    Verify {
        /// The report file.
        file: PathBuf,
    },
}
