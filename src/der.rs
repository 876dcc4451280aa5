//! The DER encodings of asymmetric keys and signatures: SubjectPublicKeyInfo (RFC 5280,
//! RFC 3279, RFC 5480, RFC 8410), PKCS #8 PrivateKeyInfo (RFC 5208) with RSAPrivateKey
//! (RFC 8017) and ECPrivateKey (RFC 5915), ECDSA's Ecdsa-Sig-Value, PKCS #1 DigestInfo, and the
//! `CKA_EC_PARAMS` / `CKA_EC_POINT` forms of PKCS #11.
//!
//! A leaf helper: std and `zeroize` only, no token and nothing else of the crate.
//!
//! Writing builds a small tree of borrowed parts ([`Node`]), measures it, and writes it into
//! one buffer of exactly that size: no reallocation leaves a copy of private bytes behind, and
//! the buffers of private keys are [`Zeroizing`].
//!
//! Reading is strict DER over a borrowed slice: single-byte tags, definite minimal lengths,
//! minimal non-negative INTEGERs, no trailing bytes. Every read is bounds-checked, no input
//! panics, and nothing is allocated but copies of parts of the input (and the caller-bounded
//! `r || s` of [`ecdsa_signature_from_der`]).

use zeroize::Zeroizing;

/// Why a DER input (or an encoder's argument) was refused: one short fixed reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid DER: {0}")]
pub struct DerError(pub &'static str);

/// Tags (universal class, and the one context tag RFC 5915 needs).
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
/// `[1] EXPLICIT`, ECPrivateKey's publicKey.
const CONTEXT_1: u8 = 0xa1;

/// rsaEncryption, 1.2.840.113549.1.1.1.
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
/// id-ecPublicKey, 1.2.840.10045.2.1.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// The DER NULL, rsaEncryption's parameters.
const DER_NULL: &[u8] = &[NULL, 0x00];

/// `CKA_EC_PARAMS` of an Ed25519 key (`CKM_EC_EDWARDS_KEY_PAIR_GEN`): the DER OBJECT
/// IDENTIFIER id-Ed25519, 1.3.101.112 (RFC 8410), which is also the algorithm of its SPKI.
pub(crate) const ED25519_EC_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// PKCS #11 3.0's other names for edwards25519 in `CKA_EC_PARAMS`: the PrintableString
/// "edwards25519" and the OID 1.3.6.1.4.1.11591.15.1.
const ED25519_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";
const ED25519_PARAMS_GNU_OID: &[u8] = &[
    0x06, 0x09, 0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01,
];

/// Whether `ec_params` (a token's `CKA_EC_PARAMS`) names edwards25519, in any of the forms
/// PKCS #11 3.0 allows: [`ED25519_EC_PARAMS`], the PrintableString "edwards25519", or the OID
/// 1.3.6.1.4.1.11591.15.1.
pub(crate) fn is_ed25519_ec_params(ec_params: &[u8]) -> bool {
    ec_params == ED25519_EC_PARAMS
        || ec_params == ED25519_PARAMS_NAME
        || ec_params == ED25519_PARAMS_GNU_OID
}

/// A named Weierstrass curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    /// NIST P-256 (secp256r1, prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
    /// SECG secp256k1.
    Secp256k1,
}

impl Curve {
    /// Every curve, for tests and look-ups.
    pub(crate) const ALL: [Curve; 4] = [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1];

    /// Bytes of a field element (and of a private scalar, and of each of `r` and `s`).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// Bytes of an uncompressed point, `0x04 || X || Y`.
    pub fn point_len(self) -> usize {
        1 + 2 * self.field_len()
    }

    /// The curve's namedCurve OBJECT IDENTIFIER as a whole DER TLV: what PKCS #11 wants in
    /// `CKA_EC_PARAMS`, and the parameters of id-ecPublicKey.
    pub fn oid_der(self) -> &'static [u8] {
        match self {
            // 1.2.840.10045.3.1.7
            Curve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            // 1.3.132.0.34
            Curve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            // 1.3.132.0.35
            Curve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
            // 1.3.132.0.10
            Curve::Secp256k1 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a],
        }
    }

    /// The curve a token's `CKA_EC_PARAMS` names, when it is one of ours as a namedCurve
    /// OID (explicit parameters and unknown curves are `None`).
    pub fn from_ec_params(ec_params: &[u8]) -> Option<Curve> {
        Curve::ALL.into_iter().find(|c| c.oid_der() == ec_params)
    }
}

/// A hash whose DigestInfo RSASSA-PKCS1-v1_5 signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hash {
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Hash {
    /// Every hash, for tests.
    #[cfg(test)]
    pub(crate) const ALL: [Hash; 5] = [
        Hash::Sha1,
        Hash::Sha224,
        Hash::Sha256,
        Hash::Sha384,
        Hash::Sha512,
    ];

    /// Bytes of a digest.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The DigestInfo up to the digest's bytes: SEQUENCE { AlgorithmIdentifier { OID, NULL },
    /// OCTET STRING header } (RFC 8017 section 9.2, note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha1 => &[
                0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
                0x14,
            ],
            Hash::Sha224 => &[
                0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x04, 0x05, 0x00, 0x04, 0x1c,
            ],
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// A public key, as a SubjectPublicKeyInfo carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA: unsigned big-endian magnitudes, without leading zeros.
    Rsa {
        /// The modulus `n`.
        modulus: Vec<u8>,
        /// The public exponent `e`.
        exponent: Vec<u8>,
    },
    /// ECDSA or ECDH on a named curve.
    Ec {
        /// The curve.
        curve: Curve,
        /// The uncompressed point `0x04 || X || Y`, of [`Curve::point_len`] bytes.
        point: Vec<u8>,
    },
    /// Ed25519: the 32-byte encoded point.
    Ed25519([u8; 32]),
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// A part of a DER encoding, borrowing its bytes: measured, then written in one pass.
enum Node<'a> {
    /// A whole TLV encoded beforehand (OIDs, NULL).
    Raw(&'a [u8]),
    /// An INTEGER from an unsigned big-endian magnitude (leading zeros are dropped and a
    /// 0x00 is put before a high bit; no bytes is zero).
    UInt(&'a [u8]),
    /// An OCTET STRING of `bytes` left-padded with zeros to `width` (`width >= bytes.len()`).
    Octets { bytes: &'a [u8], width: usize },
    /// A BIT STRING with no unused bits.
    Bits(&'a [u8]),
    /// `tag` around the concatenation of `children` (a SEQUENCE, or an OCTET STRING or
    /// context tag wrapping an encoding).
    Wrap(u8, Vec<Node<'a>>),
}

/// `bytes` without its leading zero bytes.
fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Bytes of the length octets for a content of `len` bytes.
fn length_len(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + (usize::BITS as usize / 8 - len.leading_zeros() as usize / 8)
    }
}

/// Writes the tag and length octets.
fn write_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let n = length_len(len) - 1;
        out.push(0x80 | n as u8);
        out.extend_from_slice(&len.to_be_bytes()[usize::BITS as usize / 8 - n..]);
    }
}

impl Node<'_> {
    /// A sequence of `children`.
    fn seq(children: Vec<Node<'_>>) -> Node<'_> {
        Node::Wrap(SEQUENCE, children)
    }

    /// An OCTET STRING of exactly `bytes`.
    fn octets(bytes: &[u8]) -> Node<'_> {
        Node::Octets {
            bytes,
            width: bytes.len(),
        }
    }

    /// Bytes of the content (not of the tag and length).
    fn content_len(&self) -> usize {
        match self {
            Node::Raw(_) => unreachable!("a raw node has no separate content"),
            Node::UInt(m) => {
                let m = strip_zeros(m);
                match m.first() {
                    None => 1,
                    Some(&b) => m.len() + usize::from(b >= 0x80),
                }
            }
            Node::Octets { bytes, width } => (*width).max(bytes.len()),
            Node::Bits(b) => 1 + b.len(),
            Node::Wrap(_, children) => children.iter().map(Node::encoded_len).sum(),
        }
    }

    /// Bytes of the whole encoding.
    fn encoded_len(&self) -> usize {
        match self {
            Node::Raw(tlv) => tlv.len(),
            _ => {
                let len = self.content_len();
                1 + length_len(len) + len
            }
        }
    }

    /// Appends the whole encoding to `out`.
    fn write(&self, out: &mut Vec<u8>) {
        let tag = match self {
            Node::Raw(tlv) => {
                out.extend_from_slice(tlv);
                return;
            }
            Node::UInt(_) => INTEGER,
            Node::Octets { .. } => OCTET_STRING,
            Node::Bits(_) => BIT_STRING,
            Node::Wrap(tag, _) => *tag,
        };
        write_header(out, tag, self.content_len());
        match self {
            Node::Raw(_) => {}
            Node::UInt(m) => {
                let m = strip_zeros(m);
                if m.first().is_none_or(|&b| b >= 0x80) {
                    out.push(0);
                }
                out.extend_from_slice(m);
            }
            Node::Octets { bytes, width } => {
                out.resize(out.len() + width.saturating_sub(bytes.len()), 0);
                out.extend_from_slice(bytes);
            }
            Node::Bits(b) => {
                out.push(0);
                out.extend_from_slice(b);
            }
            Node::Wrap(_, children) => children.iter().for_each(|c| c.write(out)),
        }
    }

    /// The encoding, in a buffer allocated once at its exact size.
    fn encode(&self) -> Vec<u8> {
        let len = self.encoded_len();
        let mut out = Vec::with_capacity(len);
        self.write(&mut out);
        debug_assert_eq!(out.len(), len);
        out
    }

    /// The encoding of private material: allocated once at its exact size (so no
    /// reallocation leaves a copy behind) and wiped on drop.
    fn encode_secret(&self) -> Zeroizing<Vec<u8>> {
        let len = self.encoded_len();
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        let capacity = out.capacity();
        self.write(&mut out);
        debug_assert_eq!(out.len(), len);
        debug_assert_eq!(out.capacity(), capacity, "reallocated");
        out
    }
}

/// A DER OCTET STRING around `bytes` (the `CKA_EC_POINT` form PKCS #11 specifies).
pub(crate) fn octet_string(bytes: &[u8]) -> Vec<u8> {
    Node::Octets { bytes, width: 0 }.encode()
}

/// The SubjectPublicKeyInfo of an RSA key: rsaEncryption with NULL parameters around the
/// RSAPublicKey SEQUENCE { INTEGER n, INTEGER e }. Both are unsigned big-endian (as
/// `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT`); leading zeros are dropped.
pub(crate) fn spki_rsa(modulus: &[u8], public_exponent: &[u8]) -> Vec<u8> {
    Node::seq(vec![
        Node::seq(vec![Node::Raw(OID_RSA_ENCRYPTION), Node::Raw(DER_NULL)]),
        Node::Wrap(
            BIT_STRING,
            vec![
                Node::Raw(&[0x00]), // no unused bits
                Node::seq(vec![Node::UInt(modulus), Node::UInt(public_exponent)]),
            ],
        ),
    ])
    .encode()
}

/// The SubjectPublicKeyInfo of an EC key: id-ecPublicKey with the namedCurve, and the
/// point as the BIT STRING. `point` is taken as given (the uncompressed `0x04 || X || Y`
/// that [`ec_point_from_pkcs11`] checks).
pub(crate) fn spki_ec(curve: Curve, point: &[u8]) -> Vec<u8> {
    Node::seq(vec![
        Node::seq(vec![
            Node::Raw(OID_EC_PUBLIC_KEY),
            Node::Raw(curve.oid_der()),
        ]),
        Node::Bits(point),
    ])
    .encode()
}

/// The SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): id-Ed25519 without parameters.
pub(crate) fn spki_ed25519(public_key: &[u8; 32]) -> Vec<u8> {
    Node::seq(vec![
        Node::seq(vec![Node::Raw(ED25519_EC_PARAMS)]),
        Node::Bits(public_key),
    ])
    .encode()
}

/// The raw point of a token's `CKA_EC_POINT`, which PKCS #11 says is a DER OCTET STRING
/// around it (SoftHSM) and some tokens give bare: both are accepted.
///
/// `field_len` is the curve's [`Curve::field_len`] (1 to 66) for a Weierstrass key, whose
/// point must be the uncompressed `0x04 || X || Y` (compressed points are refused); `None`
/// is an Ed25519 key, whose point is 32 bytes. The expected length tells the two forms apart
/// (a bare point starts with 0x04 too, and may look like an OCTET STRING header).
pub(crate) fn ec_point_from_pkcs11(
    ec_point: &[u8],
    field_len: Option<usize>,
) -> Result<Vec<u8>, DerError> {
    let want = match field_len {
        None => 32,
        Some(n) if (1..=MAX_FIELD_LEN).contains(&n) => 1 + 2 * n,
        Some(_) => return Err(DerError("field length out of range")),
    };
    let point = if ec_point.len() == want {
        ec_point
    } else if field_len.is_some_and(|n| ec_point.len() == 1 + n) {
        // A bare compressed point (or nothing we know).
        ec_point
    } else {
        parse_whole(ec_point, OCTET_STRING)?
    };
    if field_len.is_some() {
        check_uncompressed(point, want)?;
    } else if point.len() != want {
        return Err(DerError("wrong Ed25519 key length"));
    }
    Ok(point.to_vec())
}

/// Refuses anything but an uncompressed point of `want` bytes.
fn check_uncompressed(point: &[u8], want: usize) -> Result<(), DerError> {
    match point.first() {
        Some(0x02 | 0x03) => Err(DerError("compressed points are not supported")),
        Some(0x04) if point.len() == want => Ok(()),
        Some(0x04) => Err(DerError("wrong EC point length")),
        _ => Err(DerError("not an uncompressed EC point")),
    }
}

/// The longest field of the curves here (P-521's 66 bytes): a bound on the caller-given
/// lengths, so none can make an allocation overflow.
const MAX_FIELD_LEN: usize = 66;

/// The DER Ecdsa-Sig-Value SEQUENCE { INTEGER r, INTEGER s } of a PKCS #11 signature,
/// which is `r || s` in two halves of equal length.
pub(crate) fn ecdsa_signature_to_der(raw: &[u8]) -> Result<Vec<u8>, DerError> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return Err(DerError("raw signature is not two equal halves"));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    Ok(Node::seq(vec![Node::UInt(r), Node::UInt(s)]).encode())
}

/// The PKCS #11 `r || s` of a DER Ecdsa-Sig-Value, each half left-padded to `field_len`.
/// Refuses non-DER, negative or zero integers, and either one longer than `field_len`.
pub(crate) fn ecdsa_signature_from_der(der: &[u8], field_len: usize) -> Result<Vec<u8>, DerError> {
    if !(1..=MAX_FIELD_LEN).contains(&field_len) {
        return Err(DerError("field length out of range"));
    }
    let mut seq = Reader::new(parse_whole(der, SEQUENCE)?);
    let r = read_positive(&mut seq)?;
    let s = read_positive(&mut seq)?;
    seq.finish()?;
    if r.len() > field_len || s.len() > field_len {
        return Err(DerError("signature integer longer than the field"));
    }
    let mut out = vec![0u8; 2 * field_len];
    out[field_len - r.len()..field_len].copy_from_slice(r);
    out[2 * field_len - s.len()..].copy_from_slice(s);
    Ok(out)
}

/// The DigestInfo SEQUENCE { AlgorithmIdentifier, OCTET STRING digest } that
/// RSASSA-PKCS1-v1_5 signs (`CKM_RSA_PKCS` over a digest the caller made).
pub(crate) fn digest_info(hash: Hash, digest: &[u8]) -> Result<Vec<u8>, DerError> {
    if digest.len() != hash.len() {
        return Err(DerError("digest length does not match the hash"));
    }
    let prefix = hash.digest_info_prefix();
    let mut out = Vec::with_capacity(prefix.len() + digest.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(digest);
    Ok(out)
}

/// The PKCS #8 PrivateKeyInfo (version 0, rsaEncryption with NULL) of an RSA key, around
/// the RSAPrivateKey of version 0 with all its fields. Every argument is an unsigned
/// big-endian magnitude (as the token's `CKA_MODULUS` ... `CKA_COEFFICIENT`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pkcs8_rsa(
    n: &[u8],
    e: &[u8],
    d: &[u8],
    p: &[u8],
    q: &[u8],
    dp: &[u8],
    dq: &[u8],
    qinv: &[u8],
) -> Zeroizing<Vec<u8>> {
    let rsa_private_key = Node::seq(vec![
        Node::UInt(&[0]),
        Node::UInt(n),
        Node::UInt(e),
        Node::UInt(d),
        Node::UInt(p),
        Node::UInt(q),
        Node::UInt(dp),
        Node::UInt(dq),
        Node::UInt(qinv),
    ]);
    Node::seq(vec![
        Node::UInt(&[0]),
        Node::seq(vec![Node::Raw(OID_RSA_ENCRYPTION), Node::Raw(DER_NULL)]),
        Node::Wrap(OCTET_STRING, vec![rsa_private_key]),
    ])
    .encode_secret()
}

/// The PKCS #8 PrivateKeyInfo (version 0, id-ecPublicKey with the namedCurve) of an EC key,
/// around the ECPrivateKey of RFC 5915 (version 1): the scalar as an OCTET STRING
/// left-padded to the field length, no `[0]` parameters (they are in the
/// AlgorithmIdentifier), and `[1]` the public point when given.
///
/// `private_scalar` is unsigned big-endian (the token's `CKA_VALUE`); it must be nonzero and
/// fit the field, and `public_point` must be uncompressed and of the curve's length.
pub(crate) fn pkcs8_ec(
    curve: Curve,
    private_scalar: &[u8],
    public_point: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, DerError> {
    let scalar = strip_zeros(private_scalar);
    if scalar.is_empty() {
        return Err(DerError("private key is zero"));
    }
    if scalar.len() > curve.field_len() {
        return Err(DerError("private key longer than the field"));
    }
    let mut ec_private_key = vec![
        Node::UInt(&[1]),
        Node::Octets {
            bytes: scalar,
            width: curve.field_len(),
        },
    ];
    if let Some(point) = public_point {
        check_uncompressed(point, curve.point_len())?;
        ec_private_key.push(Node::Wrap(CONTEXT_1, vec![Node::Bits(point)]));
    }
    Ok(Node::seq(vec![
        Node::UInt(&[0]),
        Node::seq(vec![
            Node::Raw(OID_EC_PUBLIC_KEY),
            Node::Raw(curve.oid_der()),
        ]),
        Node::Wrap(OCTET_STRING, vec![Node::seq(ec_private_key)]),
    ])
    .encode_secret())
}

/// The PKCS #8 PrivateKeyInfo of an Ed25519 key (RFC 8410): version 0, id-Ed25519, and the
/// privateKey OCTET STRING holding the CurvePrivateKey OCTET STRING of the seed.
pub(crate) fn pkcs8_ed25519(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    Node::seq(vec![
        Node::UInt(&[0]),
        Node::seq(vec![Node::Raw(ED25519_EC_PARAMS)]),
        Node::Wrap(OCTET_STRING, vec![Node::octets(seed)]),
    ])
    .encode_secret()
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// A strict DER reader over a borrowed slice.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Reader { rest: input }
    }

    /// Takes `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], DerError> {
        if n > self.rest.len() {
            return Err(DerError("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// The next tag, if any.
    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads one TLV: its tag and content.
    fn read_any(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        let tag = *self.take(1)?.first().ok_or(DerError("truncated"))?;
        if tag & 0x1f == 0x1f {
            return Err(DerError("high tag numbers are not supported"));
        }
        let first = *self.take(1)?.first().ok_or(DerError("truncated"))?;
        let len = match first {
            0..=0x7f => usize::from(first),
            0x80 => return Err(DerError("indefinite length")),
            _ => {
                let n = usize::from(first & 0x7f);
                if n > 4 {
                    return Err(DerError("length too long"));
                }
                let bytes = self.take(n)?;
                if bytes.first() == Some(&0) {
                    return Err(DerError("non-minimal length"));
                }
                let len = bytes
                    .iter()
                    .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
                if len < 0x80 {
                    return Err(DerError("non-minimal length"));
                }
                len
            }
        };
        Ok((tag, self.take(len)?))
    }

    /// Reads one TLV of `tag`: its content.
    fn read(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        match self.read_any()? {
            (t, content) if t == tag => Ok(content),
            _ => Err(DerError("unexpected tag")),
        }
    }

    /// Refuses anything left.
    fn finish(&self) -> Result<(), DerError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DerError("trailing bytes"))
        }
    }
}

/// The content of `input`, which must be exactly one TLV of `tag`.
fn parse_whole(input: &[u8], tag: u8) -> Result<&[u8], DerError> {
    let mut r = Reader::new(input);
    let content = r.read(tag)?;
    r.finish()?;
    Ok(content)
}

/// The magnitude of a DER INTEGER's content: minimal, non-negative; zero is empty.
fn uint_content(content: &[u8]) -> Result<&[u8], DerError> {
    match content {
        [] => Err(DerError("empty integer")),
        [first, ..] if first & 0x80 != 0 => Err(DerError("negative integer")),
        [0] => Ok(&[]),
        [0, second, ..] if second & 0x80 == 0 => Err(DerError("non-minimal integer")),
        [0, rest @ ..] => Ok(rest),
        _ => Ok(content),
    }
}

/// Reads an INTEGER that must be positive: its magnitude, without leading zeros.
fn read_positive<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], DerError> {
    let m = uint_content(r.read(INTEGER)?)?;
    if m.is_empty() {
        return Err(DerError("integer is zero"));
    }
    Ok(m)
}

/// The content of a BIT STRING without unused bits.
fn bit_string_bytes(content: &[u8]) -> Result<&[u8], DerError> {
    match content {
        [0, bytes @ ..] => Ok(bytes),
        [] => Err(DerError("empty bit string")),
        _ => Err(DerError("bit string has unused bits")),
    }
}

/// The public key of a DER SubjectPublicKeyInfo: RSA (rsaEncryption, NULL parameters),
/// EC (id-ecPublicKey with one of our named curves; the point uncompressed and of the
/// curve's length) or Ed25519 (id-Ed25519, no parameters, 32 bytes). Strict DER throughout.
pub(crate) fn parse_spki(der: &[u8]) -> Result<PublicKey, DerError> {
    let mut spki = Reader::new(parse_whole(der, SEQUENCE)?);
    let mut alg = Reader::new(spki.read(SEQUENCE)?);
    let key = bit_string_bytes(spki.read(BIT_STRING)?)?;
    spki.finish()?;
    let oid = alg.read(OID)?;
    // The parameters, as a whole TLV (or empty when absent).
    let params = alg.rest;
    if !params.is_empty() {
        let mut p = Reader::new(params);
        p.read_any()?;
        p.finish()?;
    }
    if oid == &OID_RSA_ENCRYPTION[2..] {
        if params != DER_NULL {
            return Err(DerError("RSA parameters must be NULL"));
        }
        let mut rsa = Reader::new(parse_whole(key, SEQUENCE)?);
        let modulus = read_positive(&mut rsa)?;
        let exponent = read_positive(&mut rsa)?;
        rsa.finish()?;
        Ok(PublicKey::Rsa {
            modulus: modulus.to_vec(),
            exponent: exponent.to_vec(),
        })
    } else if oid == &OID_EC_PUBLIC_KEY[2..] {
        if alg.peek_tag() != Some(OID) {
            return Err(DerError("EC parameters must be a named curve"));
        }
        let curve = Curve::from_ec_params(params).ok_or(DerError("unsupported curve"))?;
        check_uncompressed(key, curve.point_len())?;
        Ok(PublicKey::Ec {
            curve,
            point: key.to_vec(),
        })
    } else if oid == &ED25519_EC_PARAMS[2..] {
        if !params.is_empty() {
            return Err(DerError("Ed25519 takes no parameters"));
        }
        let key = <[u8; 32]>::try_from(key).map_err(|_| DerError("wrong Ed25519 key length"))?;
        Ok(PublicKey::Ed25519(key))
    } else {
        Err(DerError("unsupported algorithm"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;
    use rand::{Rng, RngCore};

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn random_bytes(n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        OsRng.fill_bytes(&mut v);
        v
    }

    /// The dotted form of a DER OBJECT IDENTIFIER TLV, decoded here independently of the
    /// constants above.
    fn dotted(tlv: &[u8]) -> String {
        assert_eq!(tlv[0], OID);
        assert_eq!(usize::from(tlv[1]), tlv.len() - 2);
        let mut arcs = Vec::new();
        let mut acc = 0u64;
        for &b in &tlv[2..] {
            acc = acc << 7 | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                arcs.push(acc);
                acc = 0;
            }
        }
        let first = arcs.remove(0);
        let (a, b) = if first < 80 {
            (first / 40, first % 40)
        } else {
            (2, first - 80)
        };
        std::iter::once(a)
            .chain(std::iter::once(b))
            .chain(arcs)
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(".")
    }

    // ----- The writer and the reader, on their own -----

    #[test]
    fn integers_are_minimal_and_non_negative() {
        let cases: &[(&[u8], &str)] = &[
            (&[], "020100"),
            (&[0], "020100"),
            (&[0, 0, 0], "020100"),
            (&[1], "020101"),
            (&[0, 0, 1], "020101"),
            (&[0x7f], "02017f"),
            (&[0x80], "02020080"),
            (&[0, 0x80], "02020080"),
            (&[0xff, 0xff], "020300ffff"),
            (&[0x01, 0x00], "02020100"),
        ];
        for (magnitude, want) in cases {
            assert_eq!(
                Node::UInt(magnitude).encode(),
                hex(want),
                "{magnitude:02x?}"
            );
            // and back
            let enc = Node::UInt(magnitude).encode();
            let content = parse_whole(&enc, INTEGER).unwrap();
            assert_eq!(uint_content(content).unwrap(), strip_zeros(magnitude));
        }
    }

    #[test]
    fn lengths_use_the_shortest_form_and_read_back() {
        for len in [
            0usize, 1, 0x7f, 0x80, 0xff, 0x100, 0x101, 0xffff, 0x1_0000, 0x12_3456,
        ] {
            let content = vec![0xabu8; len];
            let enc = Node::octets(&content).encode();
            let header = &enc[..enc.len() - len];
            let want: Vec<u8> = match len {
                0..=0x7f => vec![0x04, len as u8],
                0x80..=0xff => vec![0x04, 0x81, len as u8],
                0x100..=0xffff => vec![0x04, 0x82, (len >> 8) as u8, len as u8],
                _ => vec![0x04, 0x83, (len >> 16) as u8, (len >> 8) as u8, len as u8],
            };
            assert_eq!(header, want, "length {len}");
            assert_eq!(Node::octets(&content).encoded_len(), enc.len());
            assert_eq!(parse_whole(&enc, OCTET_STRING).unwrap(), content.as_slice());
        }
    }

    #[test]
    fn the_reader_refuses_what_is_not_strict_der() {
        let cases: &[(&str, &str)] = &[
            ("", "truncated"),
            ("04", "truncated"),
            ("0402aa", "truncated"),
            ("0481", "truncated"),
            ("0484ffffffff", "truncated"),
            ("048000", "indefinite length"),
            ("04810100", "non-minimal length"),
            ("0481050102030405", "non-minimal length"),
            ("0482007f", "non-minimal length"),
            ("048200ff", "non-minimal length"),
            ("0485010000000000", "length too long"),
            ("04ff", "length too long"),
            ("040100ff", "trailing bytes"),
            ("0400 0400", "trailing bytes"),
            ("1f0100", "high tag numbers are not supported"),
            ("bf2000", "high tag numbers are not supported"),
            ("0500", "unexpected tag"),
            ("2400", "unexpected tag"),
        ];
        for (input, reason) in cases {
            let input = hex(&input.replace(' ', ""));
            assert_eq!(
                parse_whole(&input, OCTET_STRING),
                Err(DerError(reason)),
                "{input:02x?}"
            );
        }
        assert_eq!(parse_whole(&hex("0400"), OCTET_STRING), Ok(&[][..]));
        let mut long = hex("0481ff");
        long.extend([7u8; 0xff]);
        assert_eq!(parse_whole(&long, OCTET_STRING).unwrap(), [7u8; 0xff]);
    }

    #[test]
    fn integer_contents_are_checked() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("", Err("empty integer")),
            ("80", Err("negative integer")),
            ("ff01", Err("negative integer")),
            ("0001", Err("non-minimal integer")),
            ("0000", Err("non-minimal integer")),
            ("007f", Err("non-minimal integer")),
            ("00", Ok("")),
            ("01", Ok("01")),
            ("7f", Ok("7f")),
            ("0080", Ok("80")),
            ("00ff00", Ok("ff00")),
        ];
        for (content, want) in cases {
            let content = hex(content);
            let got = uint_content(&content);
            match want {
                Ok(m) => assert_eq!(got, Ok(hex(m).as_slice()), "{content:02x?}"),
                Err(reason) => assert_eq!(got, Err(DerError(reason)), "{content:02x?}"),
            }
        }
    }

    // ----- Identifiers -----

    #[test]
    fn object_identifiers_are_the_registered_ones() {
        let want = [
            (Curve::P256, "1.2.840.10045.3.1.7"),
            (Curve::P384, "1.3.132.0.34"),
            (Curve::P521, "1.3.132.0.35"),
            (Curve::Secp256k1, "1.3.132.0.10"),
        ];
        for (curve, arcs) in want {
            assert_eq!(dotted(curve.oid_der()), arcs);
            assert_eq!(Curve::from_ec_params(curve.oid_der()), Some(curve));
        }
        assert_eq!(dotted(OID_RSA_ENCRYPTION), "1.2.840.113549.1.1.1");
        assert_eq!(dotted(OID_EC_PUBLIC_KEY), "1.2.840.10045.2.1");
        assert_eq!(dotted(ED25519_EC_PARAMS), "1.3.101.112");
        assert_eq!(dotted(ED25519_PARAMS_GNU_OID), "1.3.6.1.4.1.11591.15.1");

        // And as RustCrypto has them.
        use p256::pkcs8::AssociatedOid;
        let theirs = [
            (Curve::P256, p256::NistP256::OID),
            (Curve::P384, p384::NistP384::OID),
            (Curve::P521, p521::NistP521::OID),
            (Curve::Secp256k1, k256::Secp256k1::OID),
        ];
        for (curve, oid) in theirs {
            assert_eq!(&curve.oid_der()[2..], oid.as_bytes(), "{curve:?}");
        }
        assert_eq!(
            &OID_RSA_ENCRYPTION[2..],
            rsa::pkcs1::ALGORITHM_OID.as_bytes()
        );
        assert_eq!(
            &OID_EC_PUBLIC_KEY[2..],
            p256::elliptic_curve::ALGORITHM_OID.as_bytes()
        );
        assert_eq!(
            &ED25519_EC_PARAMS[2..],
            ed25519_dalek::pkcs8::ALGORITHM_OID.as_bytes()
        );
    }

    #[test]
    fn ec_params_lookups() {
        assert_eq!(Curve::from_ec_params(ED25519_EC_PARAMS), None);
        assert_eq!(Curve::from_ec_params(&[]), None);
        // Explicit parameters (a SEQUENCE) and a truncated OID are not a named curve.
        assert_eq!(Curve::from_ec_params(&hex("3000")), None);
        assert_eq!(Curve::from_ec_params(&Curve::P256.oid_der()[..9]), None);
        assert!(is_ed25519_ec_params(ED25519_EC_PARAMS));
        assert!(is_ed25519_ec_params(&hex("130c656477617264733235353139")));
        assert!(is_ed25519_ec_params(ED25519_PARAMS_GNU_OID));
        assert!(!is_ed25519_ec_params(&hex("06032b656e"))); // X25519
        assert!(!is_ed25519_ec_params(Curve::P256.oid_der()));
        for curve in Curve::ALL {
            assert_eq!(curve.point_len(), 1 + 2 * curve.field_len());
        }
        let lens: Vec<usize> = Curve::ALL.iter().map(|c| c.field_len()).collect();
        assert_eq!(lens, [32, 48, 66, 32]);
    }

    // ----- Ed25519 -----

    #[test]
    fn ed25519_matches_rfc_8410_examples() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        // RFC 8410 section 10.1 (public key) and 10.3 (private key).
        let spki = b64
            .decode("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
            .unwrap();
        let public: [u8; 32] =
            hex("19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1")
                .try_into()
                .unwrap();
        assert_eq!(spki_ed25519(&public), spki);
        assert_eq!(parse_spki(&spki), Ok(PublicKey::Ed25519(public)));

        let pkcs8 = b64
            .decode("MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC")
            .unwrap();
        let seed: [u8; 32] =
            hex("d4ee72dbf913584ad5b6d8f1f769f8ad3afe7c28cbf1d4fbe097a88f44755842")
                .try_into()
                .unwrap();
        assert_eq!(pkcs8_ed25519(&seed).as_slice(), pkcs8);
    }

    #[test]
    fn ed25519_cross_checked_with_dalek() {
        use ed25519_dalek::pkcs8::{
            DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
        };
        use ed25519_dalek::{SigningKey, VerifyingKey};
        for _ in 0..16 {
            let sk = SigningKey::generate(&mut OsRng);
            let seed = sk.to_bytes();
            let ours = pkcs8_ed25519(&seed);
            assert_eq!(SigningKey::from_pkcs8_der(&ours).unwrap().to_bytes(), seed);
            // dalek writes the v2 form with the public key; without it, the bytes are ours.
            let v1 = KeypairBytes {
                secret_key: seed,
                public_key: None,
            };
            assert_eq!(ours.as_slice(), v1.to_pkcs8_der().unwrap().as_bytes());

            let public = sk.verifying_key().to_bytes();
            let spki = spki_ed25519(&public);
            assert_eq!(
                VerifyingKey::from_public_key_der(&spki).unwrap(),
                sk.verifying_key()
            );
            let theirs = sk.verifying_key().to_public_key_der().unwrap();
            assert_eq!(spki, theirs.as_bytes());
            assert_eq!(
                parse_spki(theirs.as_bytes()),
                Ok(PublicKey::Ed25519(public))
            );

            // CKA_EC_POINT, bare or wrapped.
            let wrapped = Node::octets(&public).encode();
            assert_eq!(ec_point_from_pkcs11(&public, None).unwrap(), public);
            assert_eq!(ec_point_from_pkcs11(&wrapped, None).unwrap(), public);
        }
        // A bare key that happens to look like an OCTET STRING header is still bare.
        let mut tricky = [0x5au8; 32];
        tricky[..2].copy_from_slice(&[0x04, 0x1e]);
        assert_eq!(ec_point_from_pkcs11(&tricky, None).unwrap(), tricky);
        for bad in [&[0u8; 31][..], &[0u8; 33], &hex("04200000"), &hex("041f00")] {
            assert!(ec_point_from_pkcs11(bad, None).is_err(), "{bad:02x?}");
        }
        let mut short = Node::octets(&[1u8; 31]).encode();
        assert_eq!(
            ec_point_from_pkcs11(&short, None),
            Err(DerError("wrong Ed25519 key length"))
        );
        short.push(0);
        assert_eq!(
            ec_point_from_pkcs11(&short, None),
            Err(DerError("trailing bytes"))
        );
    }

    // ----- RSA -----

    /// Primes of an RSA-2048 and an RSA-4096 key made by OpenSSL 3.0 (`genpkey`), so the
    /// tests need not generate keys of that size (minutes in a debug build).
    const P2048: &str = concat!(
        "be5c11ac6e8b35b1704deb057efa205936d68dad63e747f733b8933928666fc806ee1b203c516597",
        "0368254db696b16facc076cb7d8586682365a3162aa7ff222cdc72b51b4e9fb03a4e0b4424e4a99f",
        "e15a114b106aabc4c18bab4494ee3633cc372f2d613da6edbeb95515ea926f59d227fa65d7f03cb7",
        "19799e29fe26b3f3",
    );
    const Q2048: &str = concat!(
        "bbe822ee1705e77abe0080878ab349d9eeced2873fb7492c166d4089160c188d28f1da3b83b6b5c5",
        "f718d8abdf78994f89da5d13a0ca49c376f2ba6ba9cfc5d8c6c600b97db7f6278f407adbb65207c4",
        "e09e72e7add27c77ab56394bc310c1f9eaa3434469980d1deacecc06627f0d184579e0de023479fd",
        "9f04124ef9e12f0b",
    );
    const P4096: &str = concat!(
        "ce0e30399fd35a2df1123ddf5db190f5a6eb97cd55544acf564ea1c7489da1dc798c5969a4f7ac17",
        "d74cea352d6f8d649675547160f2ea6393602b69fedeff189318b5918670eba2e1387a71297a1f4b",
        "66c9a3a32696c90008308b3d3bdcaf78d912b1580f45affdd1139e39908c8425eebe74408af9bcec",
        "389a1b688ff64ba79962b4dad6b40efeff451ac6d29de26d1ecf330a7ee9a9051e1533e7f7f8156f",
        "8ed963d04b83bf961c86dc6cbb6bd31a1076343f75355e9084eac8525f6f1b4d04b7fd9245cb5b18",
        "67fc8be33a2cb78280a72af0ec49f148ddc9d5f7903e9ba81dbe5a71ecaaac3a8bbaf294c3c5a7e5",
        "ac9c51d1eaa2736497b37db51bf2d327",
    );
    const Q4096: &str = concat!(
        "c929a08dd56a550291adaeb891f781da7275a875139ec66b4874394f24edeffbb3ee402fe6bc3630",
        "6163c9d98ac67efab40975be7db7c31f8db10ffcf4e0ea7c238da99f0aca32e45987ccd41b565e21",
        "ce3606b12cd82181f32ff4fe2af71e9b247ccf9100c29c55674bac5ad3260136885bbce2e52dfef6",
        "a298d2a24521ac63731b56387a67a239250a594d3134432445b9c5334c8f2ce4e9ce5a19b6ef9525",
        "6cf41aabff8f4ddf7981404f7af09753885e23c58cf13ab7a47dff94da8bd2ab2c458dc7230bc75b",
        "25deac84b68e3ffb9026bc617031cc064d5214e4e135301f83358e12e20b99f0668c45c07546d02b",
        "35b9e8337e841e44e5bd0af01934813d",
    );

    fn rsa_key(p: &str, q: &str) -> rsa::RsaPrivateKey {
        use rsa::BigUint;
        rsa::RsaPrivateKey::from_p_q(
            BigUint::from_bytes_be(&hex(p)),
            BigUint::from_bytes_be(&hex(q)),
            BigUint::from(65537u32),
        )
        .unwrap()
    }

    /// n, e, d, p, q, dp, dq, qinv as unsigned big-endian bytes.
    fn rsa_parts(k: &rsa::RsaPrivateKey) -> [Vec<u8>; 8] {
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        [
            k.n().to_bytes_be(),
            k.e().to_bytes_be(),
            k.d().to_bytes_be(),
            k.primes()[0].to_bytes_be(),
            k.primes()[1].to_bytes_be(),
            k.dp().unwrap().to_bytes_be(),
            k.dq().unwrap().to_bytes_be(),
            k.crt_coefficient().unwrap().to_bytes_be(),
        ]
    }

    fn check_rsa(k: &rsa::RsaPrivateKey) {
        use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
        use rsa::traits::PublicKeyParts;
        let [n, e, d, p, q, dp, dq, qinv] = rsa_parts(k);
        let ours = pkcs8_rsa(&n, &e, &d, &p, &q, &dp, &dq, &qinv);
        assert_eq!(&rsa::RsaPrivateKey::from_pkcs8_der(&ours).unwrap(), k);
        assert_eq!(ours.as_slice(), k.to_pkcs8_der().unwrap().as_bytes());
        // Leading zeros, as a token may give them, change nothing.
        let z = |v: &[u8]| [&[0u8, 0][..], v].concat();
        let padded = pkcs8_rsa(
            &z(&n),
            &z(&e),
            &z(&d),
            &z(&p),
            &z(&q),
            &z(&dp),
            &z(&dq),
            &z(&qinv),
        );
        assert_eq!(padded, ours);

        let public = k.to_public_key();
        let spki = spki_rsa(&n, &e);
        assert_eq!(
            rsa::RsaPublicKey::from_public_key_der(&spki).unwrap(),
            public
        );
        let theirs = public.to_public_key_der().unwrap();
        assert_eq!(spki, theirs.as_bytes());
        assert_eq!(spki_rsa(&z(&n), &z(&e)), spki);
        assert_eq!(
            parse_spki(theirs.as_bytes()),
            Ok(PublicKey::Rsa {
                modulus: n.clone(),
                exponent: e.clone()
            })
        );
        assert_eq!(n.len(), public.size());
    }

    #[test]
    fn rsa_2048_and_4096_cross_checked_with_rustcrypto() {
        for (p, q, bytes) in [(P2048, Q2048, 256), (P4096, Q4096, 512)] {
            let k = rsa_key(p, q);
            check_rsa(&k);
            // The long forms: the modulus INTEGER is 0x00 || n, over 255 bytes.
            let [n, e, ..] = rsa_parts(&k);
            assert_eq!(n.len(), bytes);
            let spki = spki_rsa(&n, &e);
            // SEQUENCE(4) AlgorithmIdentifier(15) BIT STRING(4 + 1) SEQUENCE(4) INTEGER
            let at = 4 + 15 + 5 + 4;
            let len = bytes + 1;
            assert_eq!(
                spki[at..at + 5],
                [0x02, 0x82, (len >> 8) as u8, len as u8, 0x00]
            );
            assert_eq!(spki[..2], [0x30, 0x82]);
        }
    }

    #[test]
    fn rsa_fresh_key_cross_checked_with_rustcrypto() {
        // Small enough to generate in a debug build; the encoding does not care.
        let k = rsa::RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        check_rsa(&k);
    }

    #[test]
    fn digest_info_matches_rustcrypto_and_rfc_8017() {
        use rsa::sha2::{Sha224, Sha256, Sha384, Sha512};
        use rsa::Pkcs1v15Sign;
        let theirs = [
            (Hash::Sha224, Pkcs1v15Sign::new::<Sha224>()),
            (Hash::Sha256, Pkcs1v15Sign::new::<Sha256>()),
            (Hash::Sha384, Pkcs1v15Sign::new::<Sha384>()),
            (Hash::Sha512, Pkcs1v15Sign::new::<Sha512>()),
        ];
        for (hash, scheme) in theirs {
            let digest = random_bytes(hash.len());
            let di = digest_info(hash, &digest).unwrap();
            assert_eq!(di, [&scheme.prefix[..], &digest].concat(), "{hash:?}");
            assert_eq!(scheme.hash_len, Some(hash.len()));
        }
        // SHA-1's, from RFC 8017 section 9.2 note 1.
        let digest = random_bytes(20);
        assert_eq!(
            digest_info(Hash::Sha1, &digest).unwrap(),
            [&hex("3021300906052b0e03021a05000414")[..], &digest].concat()
        );
        // Each parses as SEQUENCE { SEQUENCE { OID, NULL }, OCTET STRING digest }.
        for hash in Hash::ALL {
            let digest = random_bytes(hash.len());
            let di = digest_info(hash, &digest).unwrap();
            let mut seq = Reader::new(parse_whole(&di, SEQUENCE).unwrap());
            let mut alg = Reader::new(seq.read(SEQUENCE).unwrap());
            let oid = alg.read(OID).unwrap();
            assert_eq!(alg.read(NULL).unwrap(), b"");
            alg.finish().unwrap();
            assert_eq!(seq.read(OCTET_STRING).unwrap(), digest);
            seq.finish().unwrap();
            let arcs = dotted(&[&[OID, oid.len() as u8][..], oid].concat());
            let want = match hash {
                Hash::Sha1 => "1.3.14.3.2.26",
                Hash::Sha224 => "2.16.840.1.101.3.4.2.4",
                Hash::Sha256 => "2.16.840.1.101.3.4.2.1",
                Hash::Sha384 => "2.16.840.1.101.3.4.2.2",
                Hash::Sha512 => "2.16.840.1.101.3.4.2.3",
            };
            assert_eq!(arcs, want);
            for wrong in [0, hash.len() - 1, hash.len() + 1] {
                assert_eq!(
                    digest_info(hash, &vec![0; wrong]),
                    Err(DerError("digest length does not match the hash"))
                );
            }
        }
        // And the signature over it is the one rsa makes over the digest.
        let k = rsa_key(P2048, Q2048);
        let digest = random_bytes(32);
        let di = digest_info(Hash::Sha256, &digest).unwrap();
        assert_eq!(
            k.sign(Pkcs1v15Sign::new_unprefixed(), &di).unwrap(),
            k.sign(Pkcs1v15Sign::new::<Sha256>(), &digest).unwrap()
        );
    }

    // ----- EC, once per curve -----

    macro_rules! ec_cross_checks {
        ($name:ident, $k:ident, $curve:expr) => {
            mod $name {
                use super::super::*;
                use super::random_bytes;
                use rand::rngs::OsRng;
                use $k::ecdsa::signature::RandomizedSigner;
                use $k::ecdsa::{Signature, SigningKey};
                use $k::elliptic_curve::ff::{Field, PrimeField};
                use $k::elliptic_curve::sec1::ToEncodedPoint;
                use $k::pkcs8::{
                    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey,
                };

                const CURVE: Curve = $curve;

                #[test]
                fn keys_cross_checked_with_rustcrypto() {
                    let fl = CURVE.field_len();
                    for _ in 0..16 {
                        let sk = $k::SecretKey::random(&mut OsRng);
                        let scalar = sk.to_bytes();
                        let point = sk.public_key().to_encoded_point(false);
                        let point = point.as_bytes();

                        let ours = pkcs8_ec(CURVE, &scalar, Some(point)).unwrap();
                        assert_eq!($k::SecretKey::from_pkcs8_der(&ours).unwrap(), sk);
                        assert_eq!(ours.as_slice(), sk.to_pkcs8_der().unwrap().as_bytes());
                        let bare = pkcs8_ec(CURVE, &scalar, None).unwrap();
                        assert_eq!($k::SecretKey::from_pkcs8_der(&bare).unwrap(), sk);
                        // A CKA_VALUE without its leading zeros encodes the same.
                        assert_eq!(
                            pkcs8_ec(CURVE, strip_zeros(&scalar), Some(point)).unwrap(),
                            ours
                        );

                        let spki = spki_ec(CURVE, point);
                        assert_eq!(
                            $k::PublicKey::from_public_key_der(&spki).unwrap(),
                            sk.public_key()
                        );
                        let theirs = sk.public_key().to_public_key_der().unwrap();
                        assert_eq!(spki, theirs.as_bytes());
                        assert_eq!(
                            parse_spki(theirs.as_bytes()),
                            Ok(PublicKey::Ec {
                                curve: CURVE,
                                point: point.to_vec()
                            })
                        );

                        // CKA_EC_POINT, wrapped (SoftHSM) or bare.
                        let wrapped = Node::octets(point).encode();
                        assert_eq!(ec_point_from_pkcs11(&wrapped, Some(fl)).unwrap(), point);
                        assert_eq!(ec_point_from_pkcs11(point, Some(fl)).unwrap(), point);

                        // Compressed points are refused everywhere.
                        let compressed = sk.public_key().to_encoded_point(true);
                        let compressed = compressed.as_bytes();
                        let refused = DerError("compressed points are not supported");
                        assert_eq!(ec_point_from_pkcs11(compressed, Some(fl)), Err(refused));
                        let wrapped = Node::octets(compressed).encode();
                        assert_eq!(ec_point_from_pkcs11(&wrapped, Some(fl)), Err(refused));
                        assert_eq!(parse_spki(&spki_ec(CURVE, compressed)), Err(refused));
                        assert_eq!(
                            pkcs8_ec(CURVE, &scalar, Some(compressed)).unwrap_err(),
                            refused
                        );
                    }
                }

                #[test]
                fn small_scalars_are_left_padded() {
                    let ours = pkcs8_ec(CURVE, &[1], None).unwrap();
                    let mut one = vec![0u8; CURVE.field_len()];
                    *one.last_mut().unwrap() = 1;
                    let want = $k::SecretKey::from_slice(&one).unwrap();
                    assert_eq!($k::SecretKey::from_pkcs8_der(&ours).unwrap(), want);
                    let mut at_field = vec![0u8; 3];
                    at_field.extend_from_slice(&one);
                    assert_eq!(pkcs8_ec(CURVE, &at_field, None).unwrap(), ours);
                }

                #[test]
                fn signatures_cross_checked_with_rustcrypto() {
                    let fl = CURVE.field_len();
                    let sk = SigningKey::from_slice(&$k::SecretKey::random(&mut OsRng).to_bytes())
                        .unwrap();
                    for _ in 0..64 {
                        let sig: Signature = sk.sign_with_rng(&mut OsRng, &random_bytes(16));
                        let der = sig.to_der();
                        let raw = sig.to_bytes();
                        assert_eq!(
                            ecdsa_signature_from_der(der.as_bytes(), fl).unwrap(),
                            raw.as_slice()
                        );
                        assert_eq!(ecdsa_signature_to_der(&raw).unwrap(), der.as_bytes());
                        assert_eq!(
                            Signature::from_der(&ecdsa_signature_to_der(&raw).unwrap()).unwrap(),
                            sig
                        );
                    }
                }

                #[test]
                fn edge_signatures_cross_checked_with_rustcrypto() {
                    let fl = CURVE.field_len();
                    let at = |prefix: &[u8], last: u8| {
                        let mut v = vec![0u8; fl];
                        v[..prefix.len()].copy_from_slice(prefix);
                        v[fl - 1] |= last;
                        v
                    };
                    let n_minus_1 = (-<$k::Scalar as Field>::ONE).to_repr().to_vec();
                    let candidates = [
                        at(&[], 1),                    // r = 1: fl - 1 leading zeros
                        at(&[0x80], 0),                // high bit at full length
                        at(&[0x00, 0x80], 0),          // high bit after one zero
                        at(&[0x7f, 0xff, 0xff], 0xff), // no high bit, full length
                        at(&[0x00, 0x00, 0x01], 0),
                        at(&[0x01], 0x01),
                        n_minus_1, // the largest
                    ];
                    let mut tried = 0;
                    for r in &candidates {
                        for s in &candidates {
                            let raw = [&r[..], &s[..]].concat();
                            // Values not below the group order are not signatures.
                            let Ok(sig) = Signature::from_slice(&raw) else {
                                continue;
                            };
                            tried += 1;
                            let der = sig.to_der();
                            assert_eq!(ecdsa_signature_to_der(&raw).unwrap(), der.as_bytes());
                            assert_eq!(ecdsa_signature_from_der(der.as_bytes(), fl).unwrap(), raw);
                            if fl == 66 {
                                // SEQUENCE lengths past 127 take the long form.
                                let long = der.as_bytes().len() - 2 > 0x7f;
                                assert_eq!(der.as_bytes()[1] == 0x81, long);
                            }
                        }
                    }
                    assert!(tried >= 25, "{tried}");
                    // (n-1, n-1) on P-521: 66-byte integers, a long-form SEQUENCE length.
                    if fl == 66 {
                        let raw = [&candidates[6][..], &candidates[6][..]].concat();
                        let der = ecdsa_signature_to_der(&raw).unwrap();
                        assert_eq!(der[..5], [0x30, 0x81, 0x88, 0x02, 0x42]);
                    }
                }
            }
        };
    }

    ec_cross_checks!(p256_checks, p256, Curve::P256);
    ec_cross_checks!(p384_checks, p384, Curve::P384);
    ec_cross_checks!(p521_checks, p521, Curve::P521);
    ec_cross_checks!(k256_checks, k256, Curve::Secp256k1);

    // ----- Refusals -----

    #[test]
    fn ecdsa_signatures_refused() {
        let ok = |r: &str, s: &str| {
            format!(
                "30{:02x}02{:02x}{r}02{:02x}{s}",
                4 + (r.len() + s.len()) / 2,
                r.len() / 2,
                s.len() / 2
            )
        };
        assert_eq!(
            ecdsa_signature_from_der(&hex(&ok("01", "02")), 32).unwrap(),
            [vec![0; 31], vec![1], vec![0; 31], vec![2]].concat()
        );
        let full = "00".to_string() + &"ff".repeat(32);
        assert_eq!(
            ecdsa_signature_from_der(&hex(&ok(&full, "01")), 32).unwrap()[..32],
            [0xff; 32]
        );
        let cases: Vec<(String, usize, &str)> = vec![
            (ok("80", "01"), 32, "negative integer"),
            (ok("01", "ff"), 32, "negative integer"),
            (ok("0001", "01"), 32, "non-minimal integer"),
            (ok("00", "01"), 32, "integer is zero"),
            (ok("01", "00"), 32, "integer is zero"),
            (ok("", "01"), 32, "empty integer"),
            (
                ok(&"01".repeat(33), "01"),
                32,
                "signature integer longer than the field",
            ),
            (
                ok(&("00".to_string() + &"ff".repeat(33)), "01"),
                32,
                "signature integer longer than the field",
            ),
            (
                ok("01", &"01".repeat(67)),
                66,
                "signature integer longer than the field",
            ),
            (ok("01", "01") + "00", 32, "trailing bytes"),
            ("3009020101020101020101".into(), 32, "trailing bytes"),
            ("3003020101".into(), 32, "truncated"),
            ("3106020101020101".into(), 32, "unexpected tag"),
            ("3006020101030101".into(), 32, "unexpected tag"),
            ("30800201010201010000".into(), 32, "indefinite length"),
            ("308106020101020101".into(), 32, "non-minimal length"),
            ("".into(), 32, "truncated"),
            (ok("01", "01"), 0, "field length out of range"),
            (ok("01", "01"), 67, "field length out of range"),
            (ok("01", "01"), usize::MAX, "field length out of range"),
        ];
        for (input, fl, reason) in cases {
            assert_eq!(
                ecdsa_signature_from_der(&hex(&input), fl),
                Err(DerError(reason)),
                "{input} at {fl}"
            );
        }
        for raw in [&[][..], &[1], &[1, 2, 3]] {
            assert_eq!(
                ecdsa_signature_to_der(raw),
                Err(DerError("raw signature is not two equal halves"))
            );
        }
    }

    #[test]
    fn public_keys_refused() {
        let point = [&[0x04][..], &[7u8; 64]].concat();
        fn alg(parts: Vec<Node<'_>>) -> Node<'_> {
            Node::seq(parts)
        }
        let brainpool = hex("06092b2403030208010107");
        let x25519 = hex("06032b656e");
        let spki = |alg: Node<'_>, key: Node<'_>| Node::seq(vec![alg, key]).encode();
        let rsa_key = Node::seq(vec![Node::UInt(&[0xc5; 64]), Node::UInt(&[1, 0, 1])]).encode();
        let bits = |b: &[u8]| Node::Bits(b).encode();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                spki(
                    alg(vec![Node::Raw(OID_RSA_ENCRYPTION)]),
                    Node::Raw(&bits(&rsa_key)),
                ),
                "RSA parameters must be NULL",
            ),
            (
                spki(
                    alg(vec![
                        Node::Raw(OID_RSA_ENCRYPTION),
                        Node::Raw(DER_NULL),
                        Node::Raw(DER_NULL),
                    ]),
                    Node::Raw(&bits(&rsa_key)),
                ),
                "trailing bytes",
            ),
            (
                spki(
                    alg(vec![Node::Raw(OID_RSA_ENCRYPTION), Node::Raw(DER_NULL)]),
                    Node::Raw(&bits(&hex("300602018002010f"))),
                ),
                "negative integer",
            ),
            (
                spki(
                    alg(vec![Node::Raw(OID_RSA_ENCRYPTION), Node::Raw(DER_NULL)]),
                    Node::Raw(&bits(&hex("3006020100020103"))),
                ),
                "integer is zero",
            ),
            (
                spki(
                    alg(vec![Node::Raw(OID_RSA_ENCRYPTION), Node::Raw(DER_NULL)]),
                    Node::Raw(&bits(&[&rsa_key[..], &[0]].concat())),
                ),
                "trailing bytes",
            ),
            (
                spki(
                    alg(vec![Node::Raw(OID_EC_PUBLIC_KEY), Node::Raw(&brainpool)]),
                    Node::Bits(&point),
                ),
                "unsupported curve",
            ),
            (
                spki(
                    alg(vec![Node::Raw(OID_EC_PUBLIC_KEY), Node::Raw(DER_NULL)]),
                    Node::Bits(&point),
                ),
                "EC parameters must be a named curve",
            ),
            (
                spki(alg(vec![Node::Raw(OID_EC_PUBLIC_KEY)]), Node::Bits(&point)),
                "EC parameters must be a named curve",
            ),
            (
                spki(
                    alg(vec![
                        Node::Raw(OID_EC_PUBLIC_KEY),
                        Node::Raw(Curve::P384.oid_der()),
                    ]),
                    Node::Bits(&point),
                ),
                "wrong EC point length",
            ),
            (
                spki(
                    alg(vec![
                        Node::Raw(OID_EC_PUBLIC_KEY),
                        Node::Raw(Curve::P256.oid_der()),
                    ]),
                    Node::Bits(&point[1..]),
                ),
                "not an uncompressed EC point",
            ),
            (
                spki(
                    alg(vec![
                        Node::Raw(OID_EC_PUBLIC_KEY),
                        Node::Raw(Curve::P256.oid_der()),
                    ]),
                    Node::Raw(&[&hex("034201")[..], &point].concat()),
                ),
                "bit string has unused bits",
            ),
            (
                spki(
                    alg(vec![
                        Node::Raw(OID_EC_PUBLIC_KEY),
                        Node::Raw(Curve::P256.oid_der()),
                    ]),
                    Node::Raw(&hex("0300")),
                ),
                "empty bit string",
            ),
            (
                spki(
                    alg(vec![Node::Raw(ED25519_EC_PARAMS), Node::Raw(DER_NULL)]),
                    Node::Bits(&[1; 32]),
                ),
                "Ed25519 takes no parameters",
            ),
            (
                spki(
                    alg(vec![Node::Raw(ED25519_EC_PARAMS)]),
                    Node::Bits(&[1; 31]),
                ),
                "wrong Ed25519 key length",
            ),
            (
                spki(alg(vec![Node::Raw(&x25519)]), Node::Bits(&[1; 32])),
                "unsupported algorithm",
            ),
            (
                spki(alg(vec![Node::Raw(DER_NULL)]), Node::Bits(&[1; 32])),
                "unexpected tag",
            ),
            (
                [&spki_ed25519(&[1; 32])[..], &[0]].concat(),
                "trailing bytes",
            ),
            (
                spki(
                    alg(vec![Node::Raw(ED25519_EC_PARAMS)]),
                    Node::octets(&[1; 32]),
                ),
                "unexpected tag",
            ),
        ];
        for (input, reason) in cases {
            assert_eq!(parse_spki(&input), Err(DerError(reason)), "{input:02x?}");
        }
    }

    #[test]
    fn private_keys_refused() {
        let point = [&[0x04][..], &[7u8; 64]].concat();
        assert_eq!(
            pkcs8_ec(Curve::P256, &[0; 32], None),
            Err(DerError("private key is zero"))
        );
        assert_eq!(
            pkcs8_ec(Curve::P256, &[], None),
            Err(DerError("private key is zero"))
        );
        assert_eq!(
            pkcs8_ec(Curve::P256, &[1; 33], None),
            Err(DerError("private key longer than the field"))
        );
        assert!(pkcs8_ec(Curve::P256, &[&[0][..], &[1; 32]].concat(), None).is_ok());
        assert!(pkcs8_ec(Curve::P256, &[1; 32], Some(&point)).is_ok());
        assert_eq!(
            pkcs8_ec(Curve::P384, &[1; 32], Some(&point)),
            Err(DerError("wrong EC point length"))
        );
        assert!(ec_point_from_pkcs11(&point, Some(48)).is_err());
        assert_eq!(
            ec_point_from_pkcs11(&point[..33], Some(32)),
            Err(DerError("wrong EC point length"))
        );
        assert_eq!(
            ec_point_from_pkcs11(&point, Some(0)),
            Err(DerError("field length out of range"))
        );
        assert_eq!(
            ec_point_from_pkcs11(&point, Some(usize::MAX)),
            Err(DerError("field length out of range"))
        );
    }

    // ----- Any input -----

    /// Valid encodings for every parser, to be cut and mutated.
    fn corpus() -> Vec<Vec<u8>> {
        let mut out = vec![
            spki_rsa(&[0xc5; 129], &[1, 0, 1]),
            spki_rsa(&[0x35; 300], &[3]),
            spki_ed25519(&[9; 32]),
            Node::octets(&[9; 32]).encode(),
        ];
        for curve in Curve::ALL {
            let fl = curve.field_len();
            let point = [&[0x04][..], &vec![0x8e; 2 * fl]].concat();
            out.push(spki_ec(curve, &point));
            out.push(Node::octets(&point).encode());
            for raw in [vec![0xff; 2 * fl], [vec![0; fl], vec![1; fl]].concat()] {
                out.push(ecdsa_signature_to_der(&raw).unwrap());
            }
            out.push(pkcs8_ec(curve, &[3; 20], Some(&point)).unwrap().to_vec());
        }
        out.push(pkcs8_ed25519(&[5; 32]).to_vec());
        out.push(digest_info(Hash::Sha256, &[1; 32]).unwrap());
        out.push(Curve::P256.oid_der().to_vec());
        out
    }

    /// Runs every parser on `input`. Each that accepts it must give back what re-encodes to
    /// exactly `input` (DER is unique: a strict parser accepts only canonical input) and
    /// allocate no more than `input` holds.
    fn every_parser(input: &[u8]) -> usize {
        let mut accepted = 0;
        if let Ok(key) = parse_spki(input) {
            accepted += 1;
            let again = match &key {
                PublicKey::Rsa { modulus, exponent } => {
                    assert!(modulus.len() + exponent.len() <= input.len());
                    spki_rsa(modulus, exponent)
                }
                PublicKey::Ec { curve, point } => {
                    assert!(point.len() <= input.len());
                    spki_ec(*curve, point)
                }
                PublicKey::Ed25519(k) => spki_ed25519(k),
            };
            assert_eq!(again, input);
        }
        for fl in [0, 1, 32, 48, 66, 67, usize::MAX] {
            if let Ok(raw) = ecdsa_signature_from_der(input, fl) {
                accepted += 1;
                assert_eq!(raw.len(), 2 * fl);
                assert_eq!(ecdsa_signature_to_der(&raw).unwrap(), input);
            }
        }
        for fl in [
            None,
            Some(0),
            Some(1),
            Some(32),
            Some(48),
            Some(66),
            Some(usize::MAX),
        ] {
            let got = ec_point_from_pkcs11(input, fl);
            assert_eq!(got.is_ok(), point_oracle(input, fl), "{input:02x?} {fl:?}");
            if let Ok(point) = got {
                accepted += 1;
                assert!(point.len() <= input.len());
            }
        }
        let _ = Curve::from_ec_params(input);
        let _ = is_ed25519_ec_params(input);
        let _ = ecdsa_signature_to_der(input);
        let _ = digest_info(Hash::Sha256, input);
        for curve in Curve::ALL {
            let _ = pkcs8_ec(curve, input, Some(input));
        }
        accepted
    }

    /// Whether `input` is a `CKA_EC_POINT`, by the plain rule rather than by the reader.
    fn point_oracle(input: &[u8], fl: Option<usize>) -> bool {
        let (want, uncompressed) = match fl {
            None => (32, false),
            Some(n @ 1..=66) => (1 + 2 * n, true),
            Some(_) => return false,
        };
        let header: &[u8] = if want < 0x80 {
            &[OCTET_STRING, want as u8]
        } else {
            &[OCTET_STRING, 0x81, want as u8]
        };
        let point = if input.len() == want {
            input
        } else if input.len() == header.len() + want && input.starts_with(header) {
            &input[header.len()..]
        } else {
            return false;
        };
        !uncompressed || point[0] == 0x04
    }

    #[test]
    fn every_strict_prefix_of_a_valid_encoding_is_refused() {
        for valid in corpus() {
            let whole = every_parser(&valid);
            assert!(
                whole > 0 || valid[0] == 0x30 || valid[0] == OID,
                "{valid:02x?}"
            );
            for cut in 0..valid.len() {
                let prefix = &valid[..cut];
                assert!(parse_spki(prefix).is_err());
                for fl in [32, 48, 66] {
                    assert!(ecdsa_signature_from_der(prefix, fl).is_err());
                }
                every_parser(prefix);
            }
        }
    }

    #[test]
    fn every_single_byte_change_is_survived() {
        for valid in corpus() {
            for at in 0..valid.len() {
                for byte in [0x00, 0x01, 0x7f, 0x80, 0x81, 0x82, 0xff, valid[at] ^ 0x01] {
                    let mut m = valid.clone();
                    m[at] = byte;
                    every_parser(&m);
                    m.insert(at, byte);
                    every_parser(&m);
                }
                let mut m = valid.clone();
                m.remove(at);
                every_parser(&m);
            }
        }
    }

    #[test]
    fn random_inputs_are_refused_without_panic() {
        let mut rng = OsRng;
        for _ in 0..20_000 {
            let len = rng.gen_range(0..200);
            let mut input = random_bytes(len);
            // Often start like DER, to get past the first byte.
            if len > 2 && rng.gen_bool(0.5) {
                input[0] = [SEQUENCE, INTEGER, OCTET_STRING, BIT_STRING][rng.gen_range(0..4)];
                input[1] = rng.gen_range(0..=0x84);
            }
            every_parser(&input);
            assert!(parse_spki(&input).is_err());
        }
    }

    mod fuzz {
        use super::{corpus, every_parser};
        use proptest::prelude::*;
        use proptest::sample::Index;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]
            #[test]
            fn mutated_encodings_never_panic(
                which in any::<Index>(),
                edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..6),
                cut in any::<Index>(),
            ) {
                let corpus = corpus();
                let mut input = corpus[which.index(corpus.len())].clone();
                for (at, byte) in edits {
                    let i = at.index(input.len());
                    input[i] = byte;
                }
                every_parser(&input);
                every_parser(&input[..cut.index(input.len() + 1)]);
            }
        }
    }
}
