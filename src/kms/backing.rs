//! The backing keys at work: deriving an epoch key from a CMK in the token (and what to do
//! when the token refuses), sealing under the current backing version, opening a blob. The
//! operations in `ops::crypto` build on these.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::blob::{self, Header, NONCE_LEN};
use super::ops::check_usable;
use super::store::KeyEntry;
use super::{EncryptionContext, Forms, KeyId, KeySelector, Kms, SealingPath};
use crate::error::{KmsError, Result};
use crate::hsm::{BackingKind, CmkHandle, CmkLookup, HsmError, SessionKey, GCM_IV_LEN};

impl Kms {
    /// Derives the epoch key of `entry`'s backing `version` for `nonce`. Runs with no lock
    /// held (the sealing cache calls it while only this key's derivation turn is taken).
    pub(super) fn derive(
        &self,
        entry: &KeyEntry,
        version: u32,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<SessionKey> {
        let kdf = entry.record.kdf;
        // Epoch keys wrap only where data keys are sealed in the token.
        let wrap = self.sealing == SealingPath::Token;
        self.with_backing(
            entry,
            version,
            |h| self.token.derive_key(h, kdf, nonce, wrap),
            KmsError::from,
        )
    }

    /// `entry`'s backing key of `version`, or why it is known unusable (answered without
    /// touching the token).
    pub(super) fn backing_key(&self, entry: &KeyEntry, version: u32) -> Result<CmkHandle> {
        entry.cmks.get(&version).copied().ok_or_else(|| {
            KmsError::key_unavailable(entry.unbound.get(&version).cloned().unwrap_or_else(|| {
                format!(
                    "the backing key of {} (version {version}) is not in the token",
                    self.scope.key_arn(&entry.record.id)
                )
            }))
        })
    }

    /// Runs `f` on `entry`'s backing key of `version`, for every key family; a token error
    /// becomes the answer through `map`. When the token refuses (a stale handle: another
    /// process re-created the object or the token was re-opened; or the usage is off:
    /// another process disabled the key), the records say why: they are re-read first, and
    /// a key no longer usable is that answer; for a key still Enabled, a stale handle is
    /// bound again, or a backing key whose usage is off gets its token state healed, and
    /// `f` is tried once more.
    pub(super) fn with_backing<T>(
        &self,
        entry: &KeyEntry,
        version: u32,
        f: impl Fn(CmkHandle) -> std::result::Result<T, HsmError>,
        map: impl Fn(HsmError) -> KmsError,
    ) -> Result<T> {
        let id = entry.record.id;
        let h = self.backing_key(entry, version)?;
        let first = match f(h) {
            Err(e) if e.is_stale_handle() || e.is_not_permitted() => e,
            r => return r.map_err(map),
        };
        let arn = self.key_arn(&entry.record);
        self.refresh()?;
        // The same key (a multi-Region key's in the same region) as it is now.
        let now = {
            let snap = self.store.read();
            self.entry_in(&snap, &id, self.region_of(&entry.record))
        }
        .ok_or_else(|| KmsError::not_found(format!("Key '{arn}' does not exist")))?;
        check_usable(&now, &arn)?;
        let kind = now.record.backing_kind()?;
        match self.store.relocate_cmk(&id, version)? {
            CmkLookup::Found(n) if n != h => f(n).map_err(map),
            CmkLookup::Found(n) if self.heal_token_state(&id, n, kind)? => f(n).map_err(map),
            CmkLookup::Found(_) => Err(map(first)),
            CmkLookup::Missing => Err(KmsError::key_unavailable(format!(
                "the backing key of {arn} (version {version}) is not in the token"
            ))),
            CmkLookup::Refused(why) => Err(KmsError::key_unavailable(why)),
        }
    }

    /// The token refuses a backing key whose record says Enabled: another process may have
    /// reconciled from a record that was just superseded. If the key is still Enabled (the
    /// records were just re-read), make the token agree; serialised with this process's
    /// state changes, so a concurrent DisableKey is never undone here.
    fn heal_token_state(&self, id: &KeyId, cmk: CmkHandle, kind: BackingKind) -> Result<bool> {
        self.store.with_key(id, |entry| {
            if entry.is_some() && self.usable_in_token(id) && !self.token.cmk_usable(cmk, kind)? {
                self.token.set_cmk_usable(cmk, kind, true)?;
                return Ok(true);
            }
            Ok(false)
        })
    }

    /// Seals `plaintext` under the key's current backing version (`C_Encrypt`). Returns the
    /// blob.
    pub(super) fn seal(
        &self,
        entry: &KeyEntry,
        ctx: &EncryptionContext,
        plaintext: &[u8],
        iv: [u8; GCM_IV_LEN],
    ) -> Result<Vec<u8>> {
        self.seal_with(entry, ctx, iv, |key, iv, aad| {
            Ok(self.token.gcm_seal(key, iv, aad, plaintext)?)
        })
    }

    /// Builds a blob under the key's current backing version: picks the epoch key and the
    /// header, and lets `sealer` produce ciphertext ‖ tag under that key with that IV and AAD
    /// (`C_Encrypt` of host bytes, or `C_WrapKey` of a key generated in the token: the same
    /// bytes either way).
    pub(super) fn seal_with(
        &self,
        entry: &KeyEntry,
        ctx: &EncryptionContext,
        iv: [u8; GCM_IV_LEN],
        sealer: impl FnOnce(&SessionKey, &[u8; GCM_IV_LEN], &[u8]) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let r = &entry.record;
        let version = r.current_version;
        let sk = self.epochs.for_sealing(r.id, version, || {
            let mut nonce = [0u8; NONCE_LEN];
            self.token.random_fill(&mut nonce)?;
            Ok((nonce, self.derive(entry, version, &nonce)?))
        })?;
        let header = Header {
            key_id: r.id,
            key_version: version,
            kdf: r.kdf,
            nonce: sk.nonce,
            iv,
        };
        let sealed = sealer(&sk.key, &iv, &header.aad(ctx))?;
        Ok(header.assemble(&sealed))
    }

    /// Opens a blob: finds its key, checks state and (optionally) the expected key, re-derives
    /// the epoch key and lets the token authenticate header, context and ciphertext.
    pub(super) fn open_blob(
        &self,
        bytes: &[u8],
        ctx: &EncryptionContext,
        expected: Option<&KeySelector>,
    ) -> Result<(KeyId, Zeroizing<Vec<u8>>)> {
        let blob = blob::parse(bytes)?;
        let h = &blob.header;
        let mut named = None;
        if let Some(k) = expected {
            let (want, entry) = self.resolve(k, Forms::Any)?;
            if want != h.key_id {
                return Err(KmsError::incorrect_key(
                    "The key ID in the request does not identify a CMK that can perform this operation.",
                ));
            }
            // A multi-Region key's, of the region it was resolved in.
            named = Some(entry);
        }
        let arn = self.scope.key_arn(&h.key_id);
        let entry = match named {
            Some(e) => Some(e),
            None if h.key_id.is_multi_region() => {
                let snap = self.store.read();
                self.entry_in(&snap, &h.key_id, &self.scope.region)
            }
            None => self.store.read().keys.get(&h.key_id).cloned(),
        };
        let entry = entry.ok_or_else(|| {
            KmsError::not_found(format!(
                "Key '{arn}' named by the ciphertext does not exist"
            ))
        })?;
        check_usable(&entry, &arn)?;
        if h.kdf != entry.record.kdf
            || !entry
                .record
                .versions
                .iter()
                .any(|v| v.version == h.key_version)
        {
            return Err(KmsError::invalid_ciphertext());
        }
        let aad = h.aad(ctx);
        if let Some(key) = self.epochs.cached(h.key_id, h.key_version, &h.nonce) {
            return Ok((
                h.key_id,
                self.token.gcm_open(&key, &h.iv, &aad, blob.sealed)?,
            ));
        }
        let key = self.derive(&entry, h.key_version, &h.nonce)?;
        let plaintext = self.token.gcm_open(&key, &h.iv, &aad, blob.sealed)?;
        // Only keys that opened a genuine blob are cached: forged nonces cannot fill the cache.
        self.epochs
            .remember((h.key_id, h.key_version, h.nonce), Arc::new(key));
        Ok((h.key_id, plaintext))
    }
}
