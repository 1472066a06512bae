//! The object identifiers hardkey recognizes keys by, defined once.

use der::asn1::ObjectIdentifier;

/// `rsaEncryption` (PKCS#1): the algorithm of RSA public and private keys.
pub const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `id-ecPublicKey` (RFC 5480): the algorithm of EC public and private keys.
pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `secp256r1` / `prime256v1`: NIST P-256.
pub const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `secp384r1`: NIST P-384.
pub const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// `id-Ed25519` (RFC 8410): Ed25519 public keys and signatures, no parameters.
pub const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// `id-Ed448` (RFC 8410): Ed448 public keys and signatures, no parameters.
pub const ED448: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");
