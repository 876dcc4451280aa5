//! What someone holding the token PIN can do behind p11kms's back, done with `cryptoki`
//! directly on the fixture's token: list, read, write and destroy p11kms's objects, and plant
//! keys of their own. For the tests of what p11kms does about it.
#![allow(dead_code)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use crate::common;

/// A logged-in session of this process on the fixture's token (the module is the one the
/// fixture loaded: initialising and logging in again are no-ops).
pub fn session() -> Session {
    session_on(&common::fixture().config)
}

/// A logged-in session of this process on the token `config` names (label `p11kms`). The
/// module reads its own configuration once per process: on SoftHSM, a test binary can reach
/// one token folder only.
pub fn session_on(config: &p11kms::config::Config) -> Session {
    let pkcs11 = Pkcs11::new(&config.token.module).expect("load module");
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .expect("slots")
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|i| i.label().trim_end() == "p11kms")
        })
        .expect("the p11kms token");
    let s = pkcs11.open_rw_session(slot).expect("session");
    let pin = config.token.pin.read().expect("pin");
    match s.login(
        UserType::User,
        Some(&AuthPin::from(pin.expose().to_owned())),
    ) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    s
}

fn label_of(s: &Session, h: ObjectHandle) -> Option<String> {
    s.get_attributes(h, &[AttributeType::Label])
        .ok()?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Label(l) => String::from_utf8(l).ok(),
            _ => None,
        })
}

/// Every p11kms data object: (handle, label, value).
pub fn records(s: &Session) -> Vec<(ObjectHandle, String, Vec<u8>)> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(b"p11kms".to_vec()),
        ])
        .expect("find data objects");
    found
        .into_iter()
        .filter_map(|h| {
            let attrs = s
                .get_attributes(h, &[AttributeType::Label, AttributeType::Value])
                .ok()?;
            let (mut label, mut value) = (None, None);
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = String::from_utf8(l).ok(),
                    Attribute::Value(v) => value = Some(v),
                    _ => {}
                }
            }
            Some((h, label?, value?))
        })
        .collect()
}

/// The record objects of key `id`, oldest sequence first.
pub fn key_records(s: &Session, id: &str) -> Vec<(ObjectHandle, String, Vec<u8>)> {
    let prefix = format!("p11kms:key:{id}:");
    let mut r: Vec<_> = records(s)
        .into_iter()
        .filter(|(_, l, _)| l.starts_with(&prefix))
        .collect();
    r.sort_by(|a, b| a.1.cmp(&b.1));
    r
}

/// Writes a p11kms-shaped data object (a record) with `label` and `value`.
pub fn write_record(s: &Session, label: &str, value: &[u8]) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Application(b"p11kms".to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
    ])
    .expect("create data object")
}

/// Replaces key `id`'s record by one whose value is `value`, as a newer writer would: a new
/// object with a higher sequence number, then the old ones destroyed.
pub fn replace_key_record(s: &Session, id: &str, value: &[u8]) {
    let old = key_records(s, id);
    assert!(!old.is_empty(), "key {id} has a record");
    write_record(s, &format!("p11kms:key:{id}:9999999999:ffffffff"), value);
    for (h, _, _) in old {
        s.destroy_object(h).expect("destroy old record");
    }
}

/// The newest record value of key `id`, as JSON.
pub fn key_record_json(s: &Session, id: &str) -> serde_json::Value {
    let (_, _, v) = key_records(s, id).pop().expect("a record");
    serde_json::from_slice(&v).expect("record JSON")
}

/// Secret keys (token objects) labelled exactly `label`.
pub fn secret_keys(s: &Session, label: &str) -> Vec<ObjectHandle> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .expect("find keys")
}

/// An AES-256 token key with a value the planter knows, made to look like a CMK: label, id
/// and usages as p11kms writes them (only `C_CreateObject` gives it away: `CKA_LOCAL` false).
pub fn plant_known_key(s: &Session, label: &str, id: &[u8], value: [u8; 32]) -> ObjectHandle {
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Derive(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
        Attribute::Value(value.to_vec()),
    ])
    .expect("plant a known-value key")
}

/// Labels of every object this session can see with `class`.
pub fn labels(s: &Session, class: ObjectClass) -> Vec<String> {
    s.find_objects(&[Attribute::Class(class)])
        .expect("find")
        .into_iter()
        .filter_map(|h| label_of(s, h))
        .collect()
}

/// The generation objects (p11kms's change detector: `CKA_APPLICATION` `p11kms-generation`),
/// with their labels.
pub fn generation_objects(s: &Session) -> Vec<(ObjectHandle, String)> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(b"p11kms-generation".to_vec()),
    ])
    .expect("find the generation object")
    .into_iter()
    .filter_map(|h| Some((h, label_of(s, h)?)))
    .collect()
}

/// The labels of the generation objects.
pub fn generation_labels(s: &Session) -> Vec<String> {
    generation_objects(s).into_iter().map(|(_, l)| l).collect()
}

/// Tells every p11kms process that the records changed, as p11kms's own writers do: the
/// generation object's label goes to the next counter.
pub fn announce(s: &Session) {
    for (h, label) in generation_objects(s) {
        let Some(counter) = label
            .strip_prefix("p11kms:generation:")
            .and_then(|r| r.split(':').next())
            .and_then(|c| c.parse::<u64>().ok())
        else {
            continue;
        };
        let next = format!("p11kms:generation:{:020}:0badf00d", counter + 1);
        s.update_attributes(h, &[Attribute::Label(next.into_bytes())])
            .expect("relabel the generation object");
    }
}

/// `CKA_ID` of key `id`'s backing key `version`, as p11kms writes it.
pub fn cmk_id(id: &str, version: u32) -> Vec<u8> {
    let mut cid = uuid::Uuid::parse_str(id).expect("uuid").as_bytes().to_vec();
    cid.extend_from_slice(&version.to_be_bytes());
    cid
}

/// The attack on a key: a known-value key planted as its backing version 2, and a newer
/// record that makes version 2 current.
pub fn plant_current_version(s: &Session, key: &str, value: [u8; 32]) {
    let mut record = key_record_json(s, key);
    let created = record["versions"][0]["created"].clone();
    record["current_version"] = 2.into();
    record["versions"] = serde_json::json!([
        {"version": 1, "created": created},
        {"version": 2, "created": created},
    ]);
    plant_known_key(s, &format!("p11kms:cmk:{key}:v2"), &cmk_id(key, 2), value);
    replace_key_record(s, key, &serde_json::to_vec(&record).expect("json"));
}
