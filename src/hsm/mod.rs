//! Everything that touches PKCS#11: the module, the token's sessions, mechanisms and objects.
//!
//! This is the only module that imports `cryptoki`. It offers the rest of the crate a small
//! vocabulary: a [`Token`] (module + slot + logged-in session pool), opaque object handles
//! ([`CmkHandle`], [`DataHandle`], [`SessionKey`]) and the handful of operations p11kms needs.
//! The rules of KMS (states, formats, contexts) live in `kms`, not here.

mod aead;
mod audit;
#[cfg(feature = "bench")]
mod bench;
mod caps;
mod cmk;
mod derived;
mod error;
mod import;
mod keypair;
mod oaep;
mod objects;
mod pool;
mod probe;
// The crate denies `unsafe`; the calls cryptoki cannot make are the one exception.
#[allow(unsafe_code)]
mod raw;
mod stats;
mod templates;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

pub use aead::{GCM_IV_LEN, GCM_TAG_LEN};
pub use audit::{AuditKey, CustodyFacts, AUDIT_KEY_LABEL};
#[cfg(feature = "bench")]
pub(crate) use bench::CeilingOp;
pub use caps::AsymmetricMechanisms;
pub use caps::{Capabilities, DeriveTemplateSupport, InTokenDataKeys, Kdf, MechanismSupport};
pub use cmk::{
    BackingKind, CmkAttributes, CmkCustody, CmkHandle, CmkLookup, Listed, ListedCmk, Lookup,
    PairKind, PrivateUsage,
};
pub use derived::SessionKey;
pub use error::{CallError, HsmError, Quirks, Result};
pub use import::{Imported, KeyWrapScheme, Offered, Rfc5649, WrappingKey};
pub use keypair::{Checked, SignScheme};
pub use objects::{DataHandle, DataObject};
pub use probe::ExposedDerivation;
pub use stats::{CallFn, PoolStats, TokenStats};

use crate::sync;
use pool::SessionPool;

/// How long a call waits for a free session before answering [`HsmError::Busy`].
const SESSION_WAIT: Duration = Duration::from_secs(10);

/// Which token of the PKCS#11 module to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token whose label (trailing blanks ignored) equals this.
    Label(String),
    /// The token in this slot id.
    Slot(u64),
}

/// What [`Token::open`] needs to reach and log in to a token. The caller keeps the PIN in
/// memory that is zeroized when it is done with it.
pub struct TokenParams<'a> {
    /// Path of the PKCS#11 module.
    pub module: &'a Path,
    /// Which token of the module.
    pub selector: &'a TokenSelector,
    /// The user PIN (used for `C_Login`, never kept or logged).
    pub pin: &'a str,
    /// Size of the session pool.
    pub sessions: usize,
}

/// A logged-in token: the module, the slot, a pool of sessions, and what the token can do.
///
/// Cheap to share behind an `Arc`; every method takes a session from the pool for the duration
/// of one call, so any number of threads may use one `Token`.
pub struct Token {
    inner: Arc<TokenInner>,
}

pub(crate) struct TokenInner {
    module_path: PathBuf,
    pool: SessionPool,
    /// Never used for work: it keeps the login alive (closing a process's last session logs
    /// the whole process out on both tokens we target).
    _keeper: Mutex<Session>,
    caps: Capabilities,
    info: TokenDescription,
    /// How this token's return codes read where tokens disagree.
    quirks: Quirks,
    stats: stats::Counters,
    /// For the calls cryptoki cannot make (CKA_DERIVE_TEMPLATE); `None` if unavailable.
    raw: Option<raw::RawModule>,
    /// Session objects whose last user found no free session to destroy them with; destroyed
    /// by the next drop that finds one, or by [`Token::reap`]. A `Drop` never waits.
    graveyard: Mutex<Vec<cryptoki::object::ObjectHandle>>,
    /// The OAEP hashes (bits, see `keypair`) this token's `CKM_RSA_PKCS_OAEP` refused.
    oaep_refused: std::sync::atomic::AtomicU8,
    /// The OAEP hashes (bits, see `import`) this token's `C_UnwrapKey(CKM_RSA_PKCS_OAEP)`
    /// refused.
    import_oaep_refused: std::sync::atomic::AtomicU8,
}

/// Static description of the token, for `token info` and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenDescription {
    /// Path of the module.
    pub module: String,
    /// `C_GetInfo` library description.
    pub library: String,
    /// `C_GetInfo` manufacturer.
    pub library_manufacturer: String,
    /// `C_GetInfo` library version.
    pub library_version: String,
    /// `C_GetInfo` Cryptoki version.
    pub cryptoki_version: String,
    /// The slot the token is in.
    pub slot: u64,
    /// The token's label.
    pub label: String,
    /// The token's manufacturer.
    pub manufacturer: String,
    /// The token's model.
    pub model: String,
    /// The token's serial number.
    pub serial: String,
    /// `C_GetTokenInfo` firmware version.
    pub firmware_version: String,
    /// `C_GetTokenInfo` hardware version.
    pub hardware_version: String,
}

type Registry = Mutex<HashMap<PathBuf, Pkcs11>>;

fn registry() -> &'static Registry {
    static MODULES: OnceLock<Registry> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

/// One `Pkcs11` per module path per process: `C_Initialize` may only be called once. The flag
/// says whether this call loaded it (so nothing else in the process uses it yet).
fn module(path: &Path) -> Result<(Pkcs11, bool)> {
    let mut map = sync::lock(registry());
    if let Some(ctx) = map.get(path) {
        return Ok((ctx.clone(), false));
    }
    if !path.exists() {
        return Err(HsmError::Unusable(format!(
            "PKCS#11 module {} does not exist",
            path.display()
        )));
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        HsmError::Unusable(format!(
            "cannot load PKCS#11 module {}: {e}",
            path.display()
        ))
    })?;
    // Without OS locking SoftHSM silently turns its own locking off and is not thread-safe.
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(e) if CallError::from(&e).is_already_initialized() => {}
        Err(e) => {
            return Err(HsmError::Unusable(format!(
                "C_Initialize of {} failed: {e} (the module's own configuration: SoftHSM reads \
                 SOFTHSM2_CONF, Kryoptic KRYOPTIC_CONF; see token.softhsm2_conf and token.env)",
                path.display()
            )))
        }
    }
    map.insert(path.to_path_buf(), ctx.clone());
    Ok((ctx, true))
}

/// Finalizes and forgets a module this process loaded but could not use, so the next
/// [`module`] call reads the token afresh.
fn unload(path: &Path) {
    if let Some(ctx) = sync::lock(registry()).remove(path) {
        let _ = ctx.finalize();
    }
}

/// How often [`Token::call`] retries a transiently failing call.
const CALL_RETRIES: u32 = 5;

/// How often [`Token::open`] starts over after a transient failure.
const OPEN_RETRIES: u32 = 6;

/// Why opening a token failed, and whether starting over may help.
struct OpenError {
    error: HsmError,
    /// SoftHSM rewrites its token file on every login: a process starting at that moment can
    /// read it half-written and see no token, no user PIN, or CKR_GENERAL_ERROR. The module
    /// keeps what it read at `C_Initialize`, so only a fresh `C_Initialize` helps. None of
    /// these is a rejected PIN, so a retry never costs a PIN attempt.
    transient: bool,
}

impl From<HsmError> for OpenError {
    fn from(error: HsmError) -> Self {
        OpenError {
            error,
            transient: false,
        }
    }
}

fn transient(error: HsmError) -> OpenError {
    OpenError {
        error,
        transient: true,
    }
}

fn find_slot(ctx: &Pkcs11, selector: &TokenSelector) -> Result<Slot> {
    let slots = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| HsmError::Unusable(format!("cannot list slots: {e}")))?;
    for slot in slots {
        match selector {
            TokenSelector::Slot(id) if slot.id() == *id => return Ok(slot),
            TokenSelector::Label(label) => {
                let info = ctx
                    .get_token_info(slot)
                    .map_err(|e| HsmError::Unusable(format!("cannot read token info: {e}")))?;
                if info.label().trim_end() == label {
                    return Ok(slot);
                }
            }
            _ => {}
        }
    }
    Err(HsmError::Unusable(match selector {
        TokenSelector::Label(l) => format!("no initialized token labelled {l:?}"),
        TokenSelector::Slot(s) => format!("no initialized token in slot {s}"),
    }))
}

impl Token {
    /// Loads the module (once per process), finds the token, logs in, opens the session pool
    /// and probes capabilities. Refuses, with the reason, a token that lacks what p11kms needs.
    pub fn open(params: TokenParams<'_>) -> Result<Token> {
        let mut attempt = 0;
        loop {
            let (ctx, fresh) = module(params.module)?;
            match Token::open_in(&ctx, &params) {
                Ok(token) => return Ok(token),
                Err(e) if e.transient && attempt < OPEN_RETRIES => {
                    drop(ctx);
                    // Only a module nobody else in this process uses may be finalized; one in
                    // use is asked again as it is (a writer elsewhere may finish meanwhile).
                    if fresh {
                        unload(params.module);
                    }
                    std::thread::sleep(Duration::from_millis(10 << attempt));
                    attempt += 1;
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    fn open_in(ctx: &Pkcs11, params: &TokenParams<'_>) -> Result<Token, OpenError> {
        let slot = find_slot(ctx, params.selector).map_err(transient)?;
        let keeper = ctx
            .open_rw_session(slot)
            .map_err(|e| HsmError::Unusable(format!("cannot open a session: {e}")))?;
        let pin = AuthPin::from(params.pin.to_owned());
        match keeper.login(UserType::User, Some(&pin)) {
            Ok(()) => {}
            Err(e) if CallError::from(&e).is_already_logged_in() => {}
            // The PIN itself never reaches a message.
            Err(e) => {
                let e = CallError::from(&e);
                let error = HsmError::Unusable(format!("login to the token failed: {e}"));
                return Err(OpenError {
                    transient: e.is_torn_read(),
                    error,
                });
            }
        }
        // C_GetTokenInfo right after a login can meet the same torn token file as the login.
        let mut caps = caps::probe(ctx, slot).map_err(transient)?;
        let info = describe(ctx, slot, params.module).map_err(transient)?;
        let quirks = Quirks::for_library(&info.library_manufacturer, &info.library);
        let raw = raw::RawModule::load(params.module);
        // Functional probes on throwaway session objects: what the mechanism flags cannot say.
        let listed = !caps.kdfs.is_empty();
        probe::probe_kdfs(&keeper, &mut caps);
        if listed && caps.kdfs.is_empty() {
            // Listed but failed: most likely the token was busy (e.g. a torn SoftHSM read).
            return Err(transient(HsmError::Unusable(
                "the token lists an AES key derivation, but deriving with it failed".into(),
            )));
        }
        caps.require()?;
        probe::probe_in_token_sealing(&keeper, &mut caps);
        keypair::probe_private_key_wrap(&keeper, &mut caps);
        keypair::probe_ed25519ph(&keeper, &mut caps);
        keypair::probe_ec_curves(&keeper, quirks, &mut caps);
        probe::probe_derive_template(&keeper, raw.as_ref(), &mut caps);
        import::probe_rfc5649(&keeper, raw.as_ref(), &mut caps);
        probe::probe_gcm_encrypt(&keeper, &mut caps);
        if !caps.gcm_caller_iv {
            return Err(HsmError::Unusable(
                "the token does not seal AES-GCM under the caller's 12-byte IV (it substitutes \
                 its own, as AWS CloudHSM and Luna HSMs in FIPS mode do): p11kms's ciphertext \
                 format authenticates the IV it chose, so this token cannot be used"
                    .into(),
            )
            .into());
        }
        let pool = SessionPool::open(ctx, slot, params.sessions.max(1), SESSION_WAIT)?;
        Ok(Token {
            inner: Arc::new(TokenInner {
                module_path: params.module.to_path_buf(),
                pool,
                _keeper: Mutex::new(keeper),
                caps,
                info,
                quirks,
                stats: stats::Counters::default(),
                raw,
                graveyard: Mutex::new(Vec::new()),
                oaep_refused: std::sync::atomic::AtomicU8::new(0),
                import_oaep_refused: std::sync::atomic::AtomicU8::new(0),
            }),
        })
    }

    /// How this token's ambiguous return codes are read (see [`Quirks`]).
    pub fn quirks(&self) -> Quirks {
        self.inner.quirks
    }

    /// The PKCS#11 calls this `Token` has made so far (see [`TokenStats`]).
    pub fn stats(&self) -> TokenStats {
        self.inner.stats.snapshot()
    }

    /// What the token can do, as probed at open.
    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    /// The module and token, as they describe themselves.
    pub fn description(&self) -> &TokenDescription {
        &self.inner.info
    }

    /// Path of the PKCS#11 module.
    pub fn module_path(&self) -> &Path {
        &self.inner.module_path
    }

    /// Number of sessions in the pool (the useful degree of parallelism).
    pub fn pool_size(&self) -> usize {
        self.inner.pool.size()
    }

    /// Whether a session can be taken and used right now (for readiness checks).
    pub fn ping(&self) -> Result<()> {
        let s = self.inner.pool.get()?;
        s.get_session_info().map(|_| ()).map_err(HsmError::from)
    }

    fn count(&self, counter: impl Fn(&stats::Counters) -> &std::sync::atomic::AtomicU64) {
        self.inner.stats.count(counter(&self.inner.stats));
    }

    /// The session pool's numbers: call times by function, waits for a session, loans now.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// How long the longest-running token call has been running (`None`: none is). Seconds
    /// mean the token has stopped answering (a network HSM failing over, a held lock).
    pub fn longest_call(&self) -> Option<Duration> {
        self.inner.pool.longest_loan()
    }

    /// Destroys the session objects queued by drops that found no free session.
    pub fn reap(&self) {
        let queued = std::mem::take(&mut *sync::lock(&self.inner.graveyard));
        if queued.is_empty() {
            return;
        }
        match self.inner.pool.get() {
            Ok(s) => {
                for h in queued {
                    let _ = s.destroy_object(h);
                }
            }
            Err(_) => sync::lock(&self.inner.graveyard).extend(queued),
        }
    }

    /// Runs one call on a pooled session, retrying a few times while the token reports
    /// transient trouble ([`CallError::is_transient`]): the one retry policy of every token
    /// call that may be repeated. A call that creates an object goes through
    /// [`Token::create`] instead.
    pub(crate) fn call<T>(&self, f: impl Fn(&Session) -> cryptoki::error::Result<T>) -> Result<T> {
        self.retrying(false, f)
    }

    /// [`Token::call`] for a call on one object handle: a stale handle always comes back as
    /// [`CallError::is_stale_handle`], whatever code this token uses for it.
    pub(crate) fn handle_call<T>(
        &self,
        f: impl Fn(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T> {
        self.retrying(true, f)
    }

    fn retrying<T>(
        &self,
        on_handle: bool,
        f: impl Fn(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            match self.call_once(on_handle, &f) {
                Err(HsmError::Call(e)) if e.is_transient() && attempt < CALL_RETRIES => {}
                r => return r,
            }
            std::thread::sleep(Duration::from_millis(2 << attempt));
            attempt += 1;
        }
    }

    /// One attempt of one call on a pooled session, its error read with this token's quirks.
    fn call_once<T>(
        &self,
        on_handle: bool,
        f: impl Fn(&Session) -> cryptoki::error::Result<T>,
    ) -> Result<T> {
        let s = self.inner.pool.get()?;
        f(&s).map_err(|e| {
            HsmError::Call(CallError::from(&e).read_with(self.inner.quirks, on_handle))
        })
    }

    /// A call that creates a token object. A transient failure does not prove that nothing
    /// was created (the token may have stored the object and then failed), so before each
    /// new attempt `find` looks for what the failed one may have left: never two objects for
    /// one create.
    pub(crate) fn create<T>(
        &self,
        create: impl Fn(&Session) -> cryptoki::error::Result<T>,
        find: impl Fn() -> Result<Option<T>>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            match self.call_once(false, &create) {
                Err(HsmError::Call(e)) if e.is_transient() && attempt < CALL_RETRIES => {
                    std::thread::sleep(Duration::from_millis(2 << attempt));
                    attempt += 1;
                    if let Some(v) = find()? {
                        return Ok(v);
                    }
                }
                r => return r,
            }
        }
    }

    /// `n` bytes from the token's RNG.
    pub fn random(&self, n: usize) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let mut out = zeroize::Zeroizing::new(vec![0u8; n]);
        self.random_fill(&mut out)?;
        Ok(out)
    }

    /// Fills `buf` from the token's RNG.
    pub fn random_fill(&self, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let cell = std::cell::RefCell::new(buf);
        self.call(|s| {
            let mut buf = cell.borrow_mut();
            self.inner.stats.count(&self.inner.stats.random_calls);
            stats::Counters::add(&self.inner.stats.random_bytes, buf.len() as u64);
            s.generate_random_slice(&mut buf)
        })
    }
}

fn describe(ctx: &Pkcs11, slot: Slot, module: &Path) -> Result<TokenDescription> {
    let lib = ctx
        .get_library_info()
        .map_err(|e| HsmError::Unusable(format!("C_GetInfo failed: {e}")))?;
    let tok = ctx
        .get_token_info(slot)
        .map_err(|e| HsmError::Unusable(format!("C_GetTokenInfo failed: {e}")))?;
    Ok(TokenDescription {
        module: module.display().to_string(),
        library: lib.library_description().trim_end().to_string(),
        library_manufacturer: lib.manufacturer_id().trim_end().to_string(),
        library_version: lib.library_version().to_string(),
        cryptoki_version: lib.cryptoki_version().to_string(),
        slot: slot.id(),
        label: tok.label().trim_end().to_string(),
        manufacturer: tok.manufacturer_id().trim_end().to_string(),
        model: tok.model().trim_end().to_string(),
        serial: tok.serial_number().trim_end().to_string(),
        firmware_version: tok.firmware_version().to_string(),
        hardware_version: tok.hardware_version().to_string(),
    })
}

/// Initialises a token in the first free slot of `module` (SoftHSM offers one), with `label`,
/// the SO PIN and the user PIN. Does nothing if a token with that label already exists.
/// Returns true if a token was created.
pub fn init_token(module_path: &Path, label: &str, so_pin: &str, user_pin: &str) -> Result<bool> {
    let (ctx, _) = module(module_path)?;
    if find_slot(&ctx, &TokenSelector::Label(label.to_string())).is_ok() {
        return Ok(false);
    }
    let unusable = |what: &str, e: cryptoki::error::Error| {
        HsmError::Unusable(format!("{what}: {}", CallError::from(&e)))
    };
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| unusable("cannot list slots", e))?;
    let mut free = None;
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| unusable("cannot read token info", e))?;
        if !info.token_initialized() {
            free = Some(slot);
            break;
        }
    }
    let slot = free.ok_or_else(|| {
        HsmError::Unusable(format!(
            "no free slot to initialise a token in {}",
            module_path.display()
        ))
    })?;
    let so = AuthPin::from(so_pin.to_owned());
    ctx.init_token(slot, &so, label)
        .map_err(|e| unusable("C_InitToken failed", e))?;
    // SoftHSM moves the new token to a new slot id: find it again by label.
    let slot = find_slot(&ctx, &TokenSelector::Label(label.to_string()))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| unusable("cannot open a session", e))?;
    session
        .login(UserType::So, Some(&so))
        .map_err(|e| unusable("SO login failed", e))?;
    session
        .init_pin(&AuthPin::from(user_pin.to_owned()))
        .map_err(|e| unusable("C_InitPIN failed", e))?;
    session
        .logout()
        .map_err(|e| unusable("SO logout failed", e))?;
    Ok(true)
}
