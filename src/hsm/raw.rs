//! The few PKCS#11 calls that `cryptoki` 0.12 cannot express, made through the module's own
//! function list: its `Attribute` enum has no `CKA_DERIVE_TEMPLATE` (an array attribute), which
//! p11kms sets on CMKs where the token enforces it, and its `Mechanism` enum has no
//! `CKM_AES_KEY_WRAP_KWP` (RFC 5649 on PKCS#11 3.x tokens), which key import unwraps with.
//!
//! The function list is the one of the module `cryptoki` already loaded (`dlopen` with
//! `RTLD_NOLOAD` returns that same mapping), so the session and object handles of a
//! `cryptoki::Session` are valid here. Besides `process::wipe_env`, everything unsafe in
//! p11kms is in this file.

use std::ffi::CString;
use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{
    CKA_DERIVE_TEMPLATE, CK_ATTRIBUTE, CK_FUNCTION_LIST, CK_FUNCTION_LIST_PTR, CK_MECHANISM,
    CK_MECHANISM_TYPE, CK_OBJECT_HANDLE, CK_RV, CK_ULONG,
};

/// The module's `CK_FUNCTION_LIST` (version 2.x layout, which every module offers).
pub(crate) struct RawModule {
    list: *const CK_FUNCTION_LIST,
}

// The function list is a static table inside the loaded module, never freed while the
// process runs (the dlopen reference taken in `load` is never released), and PKCS#11
// functions are thread-safe under CKF_OS_LOCKING_OK.
unsafe impl Send for RawModule {}
unsafe impl Sync for RawModule {}

impl RawModule {
    /// The function list of the already loaded module at `path`; `None` if it cannot be had
    /// (then the features that need it are simply not used).
    pub(crate) fn load(path: &Path) -> Option<RawModule> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: RTLD_NOLOAD only takes a reference to a library already mapped (by
        // cryptoki's libloading); it never runs initialisers of a new one. The reference is
        // kept for the life of the process so the table below stays valid.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: a NUL-terminated symbol name on a valid handle.
        let sym = unsafe { libc::dlsym(handle, c"C_GetFunctionList".as_ptr()) };
        if sym.is_null() {
            return None;
        }
        type GetFunctionList = unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV;
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 version.
        let get: GetFunctionList = unsafe { std::mem::transmute(sym) };
        let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        // SAFETY: `list` is a valid out-pointer.
        let rv = unsafe { get(&mut list) };
        (rv == 0 && !list.is_null()).then_some(RawModule { list })
    }

    fn list(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: non-null and valid for the process lifetime (see `load`).
        unsafe { &*self.list }
    }

    /// `C_GenerateKey` with `template` plus `CKA_DERIVE_TEMPLATE = derive_template`.
    pub(crate) fn generate_key_with_derive_template(
        &self,
        session: &Session,
        mechanism: CK_MECHANISM_TYPE,
        template: &[Attribute],
        derive_template: &[Attribute],
    ) -> cryptoki::error::Result<ObjectHandle> {
        let f = self
            .list()
            .C_GenerateKey
            .ok_or(CkError::NullFunctionPointer)?;
        // The CK_ATTRIBUTEs point into `template` and `derive_template`, which outlive the call.
        let inner: Vec<CK_ATTRIBUTE> = derive_template.iter().map(CK_ATTRIBUTE::from).collect();
        let mut outer: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        outer.push(array_attribute(&inner));
        let mut mech = CK_MECHANISM {
            mechanism,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: every pointer is valid for the duration of the call; lengths match.
        let rv = unsafe {
            f(
                session.handle(),
                &mut mech,
                outer.as_mut_ptr(),
                outer.len() as CK_ULONG,
                &mut handle,
            )
        };
        Rv::from(rv).into_result(Function::GenerateKey)?;
        // SAFETY: a handle the token just returned for this session's application.
        Ok(unsafe { ObjectHandle::new_from_raw(handle) })
    }

    /// `C_UnwrapKey` with `mechanism` (parameters as the caller built them; they must outlive
    /// the call, which they do: the caller owns them) into an object of `template`, plus
    /// `CKA_DERIVE_TEMPLATE = derive_template` when given.
    pub(crate) fn unwrap_key(
        &self,
        session: &Session,
        mechanism: &mut CK_MECHANISM,
        unwrapping_key: ObjectHandle,
        wrapped: &[u8],
        template: &[Attribute],
        derive_template: Option<&[Attribute]>,
    ) -> cryptoki::error::Result<ObjectHandle> {
        let f = self
            .list()
            .C_UnwrapKey
            .ok_or(CkError::NullFunctionPointer)?;
        let inner: Vec<CK_ATTRIBUTE> = derive_template
            .unwrap_or_default()
            .iter()
            .map(CK_ATTRIBUTE::from)
            .collect();
        let mut outer: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
        if derive_template.is_some() {
            outer.push(array_attribute(&inner));
        }
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: every pointer is valid for the duration of the call (the wrapped bytes are
        // only read, despite the C signature); lengths match.
        let rv = unsafe {
            f(
                session.handle(),
                mechanism,
                unwrapping_key.handle(),
                wrapped.as_ptr() as *mut u8,
                wrapped.len() as CK_ULONG,
                outer.as_mut_ptr(),
                outer.len() as CK_ULONG,
                &mut handle,
            )
        };
        Rv::from(rv).into_result(Function::UnwrapKey)?;
        // SAFETY: a handle the token just returned for this session's application.
        Ok(unsafe { ObjectHandle::new_from_raw(handle) })
    }

    /// `C_SetAttributeValue(CKA_DERIVE_TEMPLATE = derive_template)` on `key`: only the
    /// capability probe uses it, to find out whether a PIN holder could loosen the template.
    pub(crate) fn set_derive_template(
        &self,
        session: &Session,
        key: ObjectHandle,
        derive_template: &[Attribute],
    ) -> cryptoki::error::Result<()> {
        let f = self
            .list()
            .C_SetAttributeValue
            .ok_or(CkError::NullFunctionPointer)?;
        let inner: Vec<CK_ATTRIBUTE> = derive_template.iter().map(CK_ATTRIBUTE::from).collect();
        let mut outer = [array_attribute(&inner)];
        // SAFETY: as above.
        let rv = unsafe { f(session.handle(), key.handle(), outer.as_mut_ptr(), 1) };
        Rv::from(rv).into_result(Function::SetAttributeValue)
    }
}

fn array_attribute(inner: &[CK_ATTRIBUTE]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: CKA_DERIVE_TEMPLATE,
        pValue: inner.as_ptr() as *mut std::ffi::c_void,
        ulValueLen: std::mem::size_of_val(inner) as CK_ULONG,
    }
}
