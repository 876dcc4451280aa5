//! `CKO_DATA` objects: where p11kms keeps its metadata, inside the token.
//!
//! Each object is written once and never modified (SoftHSM cannot update a data object's value
//! in place); `kms::store` builds versioned records on top of that.

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};

use super::{Result, Token};

/// A data object's handle. Opaque outside `hsm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHandle(ObjectHandle);

/// A data object as listed: its handle and label (the value is read separately, and only for
/// objects not seen before).
#[derive(Debug, Clone)]
pub struct DataObject {
    /// The object's handle.
    pub handle: DataHandle,
    /// `CKA_LABEL`.
    pub label: String,
}

fn base_template(application: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Application(application.as_bytes().to_vec()),
    ]
}

impl Token {
    /// Creates a private token data object; the object is complete or absent. A transient
    /// failure is followed by a look for an object with this label and value before another
    /// attempt, so one call never leaves two copies.
    pub fn create_data(&self, application: &str, label: &str, value: &[u8]) -> Result<DataHandle> {
        let mut template = base_template(application);
        template.extend([
            // Kryoptic defaults CKO_DATA to public: metadata is private.
            Attribute::Private(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ]);
        let find = template.clone();
        template.push(Attribute::Value(value.to_vec()));
        let found = || -> Result<Option<ObjectHandle>> {
            for h in self.call(|s| s.find_objects(&find))? {
                if self.read_data(DataHandle(h))?.as_deref() == Some(value) {
                    return Ok(Some(h));
                }
            }
            Ok(None)
        };
        Ok(DataHandle(
            self.create(|s| s.create_object(&template), found)?,
        ))
    }

    /// Every data object of `application`, with its label.
    pub fn list_data(&self, application: &str) -> Result<Vec<DataObject>> {
        let template = base_template(application);
        let handles = self.call(|s| s.find_objects(&template))?;
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            match self.handle_call(|s| s.get_attributes(h, &[AttributeType::Label])) {
                Ok(attrs) => {
                    for a in attrs {
                        if let Attribute::Label(l) = a {
                            if let Ok(label) = String::from_utf8(l) {
                                out.push(DataObject {
                                    handle: DataHandle(h),
                                    label,
                                });
                            }
                        }
                    }
                }
                // Destroyed by another process between find and read.
                Err(e) if e.is_stale_handle() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// A data object's value; `None` if it has vanished meanwhile.
    pub fn read_data(&self, handle: DataHandle) -> Result<Option<Vec<u8>>> {
        match self.handle_call(|s| s.get_attributes(handle.0, &[AttributeType::Value])) {
            Ok(attrs) => Ok(attrs.into_iter().find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })),
            Err(e) if e.is_stale_handle() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every data object of `application` with its label and value, one read per object
    /// (a first load, where every value is needed anyway).
    pub fn list_data_values(&self, application: &str) -> Result<Vec<(DataObject, Vec<u8>)>> {
        let template = base_template(application);
        let handles = self.call(|s| s.find_objects(&template))?;
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            let attrs = match self
                .handle_call(|s| s.get_attributes(h, &[AttributeType::Label, AttributeType::Value]))
            {
                Ok(a) => a,
                Err(e) if e.is_stale_handle() => continue,
                Err(e) => return Err(e),
            };
            let (mut label, mut value) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = String::from_utf8(l).ok(),
                    Attribute::Value(v) => value = Some(v),
                    _ => {}
                }
            }
            if let (Some(label), Some(value)) = (label, value) {
                out.push((
                    DataObject {
                        handle: DataHandle(h),
                        label,
                    },
                    value,
                ));
            }
        }
        Ok(out)
    }

    /// A data object's label; `None` if it has vanished.
    pub fn data_label(&self, handle: DataHandle) -> Result<Option<String>> {
        match self.handle_call(|s| s.get_attributes(handle.0, &[AttributeType::Label])) {
            Ok(attrs) => Ok(attrs.into_iter().find_map(|a| match a {
                Attribute::Label(l) => String::from_utf8(l).ok(),
                _ => None,
            })),
            Err(e) if e.is_stale_handle() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Changes a data object's label in place (both tokens we target allow it, unlike the
    /// value). `Ok(false)`: the object has vanished.
    pub fn relabel_data(&self, handle: DataHandle, label: &str) -> Result<bool> {
        let attr = [Attribute::Label(label.as_bytes().to_vec())];
        match self.handle_call(|s| s.update_attributes(handle.0, &attr)) {
            Ok(()) => Ok(true),
            Err(e) if e.is_stale_handle() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Destroys a data object; one already gone is not an error.
    pub fn destroy_data(&self, handle: DataHandle) -> Result<()> {
        match self.handle_call(|s| s.destroy_object(handle.0)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_stale_handle() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
