//! What the store keeps its metadata in, as two small traits, and the token as today's
//! implementation of both.
//!
//! - [`RecordBackend`]: immutable labelled objects (the key and alias records, written once,
//!   never changed) plus one object whose label can change (the generation stamp). A
//!   database could implement it for deployments whose HSM cannot hold many objects.
//! - [`BackingKeys`]: finding, proving and destroying the CMK backing keys by label. Always
//!   the token.
//!
//! Unit tests of the store run against an in-memory implementation of both (`memory.rs`).

use std::fmt::Debug;
use std::sync::Arc;

use crate::error::Result;
use crate::hsm::{BackingKind, CmkHandle, DataHandle, DataObject, Listed, Lookup, Token};

/// A stored object as listed.
#[derive(Debug, Clone)]
pub struct Stored<O> {
    pub object: O,
    pub label: String,
    /// Its value, if the listing asked for values.
    pub value: Option<Vec<u8>>,
}

/// Where records live.
pub trait RecordBackend: Send + Sync {
    /// A stored object (a record, or the generation object).
    type Object: Copy + Eq + Debug + Send + Sync;

    /// Fills `buf` with random bytes (writer tags, the generation object's value).
    fn random(&self, buf: &mut [u8]) -> Result<()>;
    /// Every object of `application` with its label, and with its value if `values` (a first
    /// load: one read per object instead of two).
    fn list(&self, application: &str, values: bool) -> Result<Vec<Stored<Self::Object>>>;
    /// An object's value; `None` if it has vanished.
    fn read(&self, o: Self::Object) -> Result<Option<Vec<u8>>>;
    /// An object's label; `None` if it has vanished.
    fn label(&self, o: Self::Object) -> Result<Option<String>>;
    /// Changes an object's label; `Ok(false)` if it has vanished.
    fn relabel(&self, o: Self::Object, label: &str) -> Result<bool>;
    /// Creates an object (complete or absent).
    fn create(&self, application: &str, label: &str, value: &[u8]) -> Result<Self::Object>;
    /// Destroys an object; one already gone is not an error.
    fn destroy(&self, o: Self::Object) -> Result<()>;
}

/// Where the backing keys live.
pub trait BackingKeys: Send + Sync {
    /// A backing key's handle.
    type Key: Copy + Eq + Debug + Send + Sync;

    /// Every backing key whose label starts with `prefix`, with what proves it genuine.
    fn list_detailed(&self, prefix: &str) -> Result<Vec<Listed<Self::Key>>>;
    /// Labels and handles of every backing key whose label starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Self::Key)>>;
    /// The one genuine backing key under `label` with `CKA_ID = expected_id`, judged.
    fn find(&self, label: &str, expected_id: &[u8], kind: BackingKind)
        -> Result<Lookup<Self::Key>>;
    /// Everything under `label`, unchecked (to destroy it all).
    fn find_all(&self, label: &str) -> Result<Vec<Self::Key>>;
    /// Destroys a backing key; one already gone is not an error.
    fn destroy(&self, k: Self::Key) -> Result<()>;
}

impl RecordBackend for Arc<Token> {
    type Object = DataHandle;

    fn random(&self, buf: &mut [u8]) -> Result<()> {
        Ok(self.random_fill(buf)?)
    }

    fn list(&self, application: &str, values: bool) -> Result<Vec<Stored<DataHandle>>> {
        let stored = |o: DataObject, value| Stored {
            object: o.handle,
            label: o.label,
            value,
        };
        Ok(if values {
            self.list_data_values(application)?
                .into_iter()
                .map(|(o, v)| stored(o, Some(v)))
                .collect()
        } else {
            self.list_data(application)?
                .into_iter()
                .map(|o| stored(o, None))
                .collect()
        })
    }

    fn read(&self, o: DataHandle) -> Result<Option<Vec<u8>>> {
        Ok(self.read_data(o)?)
    }

    fn label(&self, o: DataHandle) -> Result<Option<String>> {
        Ok(self.data_label(o)?)
    }

    fn relabel(&self, o: DataHandle, label: &str) -> Result<bool> {
        Ok(self.relabel_data(o, label)?)
    }

    fn create(&self, application: &str, label: &str, value: &[u8]) -> Result<DataHandle> {
        Ok(self.create_data(application, label, value)?)
    }

    fn destroy(&self, o: DataHandle) -> Result<()> {
        Ok(self.destroy_data(o)?)
    }
}

impl BackingKeys for Arc<Token> {
    type Key = CmkHandle;

    fn list_detailed(&self, prefix: &str) -> Result<Vec<Listed<CmkHandle>>> {
        Ok(self.list_cmks_detailed(prefix)?)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, CmkHandle)>> {
        Ok(self.list_cmks(prefix)?)
    }

    fn find(
        &self,
        label: &str,
        expected_id: &[u8],
        kind: BackingKind,
    ) -> Result<Lookup<CmkHandle>> {
        Ok(self.find_cmk(label, expected_id, kind)?)
    }

    fn find_all(&self, label: &str) -> Result<Vec<CmkHandle>> {
        Ok(self.find_cmks(label)?)
    }

    fn destroy(&self, k: CmkHandle) -> Result<()> {
        Ok(self.destroy_cmk(k)?)
    }
}
