//! Bulk reads for start-up and metadata refresh: one `C_FindObjects` and one read per object,
//! never one search per key (on SoftHSM every search costs ~26 µs per object in the token).

use cryptoki::object::{Attribute, AttributeType, ObjectClass};

use super::keys::CmkAttributes;
use super::{CmkHandle, Token};
use crate::error::Result;

/// A CMK as listed: its label, handle, whether the token lets it derive now, and the
/// attributes that must prove it genuine before it is used ([`CmkAttributes::verify`]).
#[derive(Debug, Clone)]
pub struct ListedCmk {
    pub label: String,
    pub handle: CmkHandle,
    pub derive: bool,
    pub attributes: CmkAttributes,
}

impl Token {
    /// Every token secret key whose label starts with `prefix`, with its `CKA_DERIVE` and
    /// identity attributes, read in one call per key.
    pub fn list_cmks_detailed(&self, prefix: &str) -> Result<Vec<ListedCmk>> {
        let handles = self.call(|s| {
            s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
            ])
        })??;
        let mut out = Vec::new();
        for h in handles {
            let mut types = vec![AttributeType::Label, AttributeType::Derive];
            types.extend(CmkAttributes::TYPES);
            let attrs = match self.handle_call(|s| s.get_attributes(h, &types))? {
                Ok(a) => a,
                Err(e) if e.is_stale_handle() => continue,
                Err(e) => return Err(e.into()),
            };
            let (mut label, mut derive) = (None, false);
            for a in &attrs {
                match a {
                    Attribute::Label(l) => label = String::from_utf8(l.clone()).ok(),
                    Attribute::Derive(d) => derive = *d,
                    _ => {}
                }
            }
            if let Some(label) = label.filter(|l| l.starts_with(prefix)) {
                out.push(ListedCmk {
                    label,
                    handle: CmkHandle(h),
                    derive,
                    attributes: CmkAttributes::from_attributes(attrs),
                });
            }
        }
        Ok(out)
    }
}
