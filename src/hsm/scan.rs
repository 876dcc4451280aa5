//! Bulk reads for start-up and metadata refresh: one `C_FindObjects` and one read per object,
//! never one search per key (on SoftHSM every search costs ~26 µs per object in the token).

use cryptoki::object::{Attribute, AttributeType, ObjectClass};

use super::{CmkHandle, Token};
use crate::error::Result;

/// A CMK as listed: its label, handle and whether the token lets it derive now.
#[derive(Debug, Clone)]
pub struct ListedCmk {
    pub label: String,
    pub handle: CmkHandle,
    pub derive: bool,
}

impl Token {
    /// Every token secret key whose label starts with `prefix`, with its `CKA_DERIVE`, read
    /// in one call per key.
    pub fn list_cmks_detailed(&self, prefix: &str) -> Result<Vec<ListedCmk>> {
        let handles = self.call(|s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
            ])
        })??;
        let mut out = Vec::new();
        for h in handles {
            let attrs = match self.handle_call(|s| {
                s.get_attributes(h, &[AttributeType::Label, AttributeType::Derive])
            })? {
                Ok(a) => a,
                Err(e) if e.is_stale_handle() => continue,
                Err(e) => return Err(e.into()),
            };
            let (mut label, mut derive) = (None, false);
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = String::from_utf8(l).ok(),
                    Attribute::Derive(d) => derive = d,
                    _ => {}
                }
            }
            if let Some(label) = label.filter(|l| l.starts_with(prefix)) {
                out.push(ListedCmk {
                    label,
                    handle: CmkHandle(h),
                    derive,
                });
            }
        }
        Ok(out)
    }
}
