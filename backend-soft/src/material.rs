//! Key material: generation, PKCS#8 / PKCS#1 / SEC1 decoding, PKCS#8 encoding, public keys.

use hardkey_api::oid::{EC_PUBLIC_KEY, ED448, ED25519, RSA_ENCRYPTION, SECP256R1, SECP384R1};
use hardkey_api::{Error, InvalidInput, KeyAlgorithm, Operation, PublicKey, Result, Unsupported};
use pkcs8::der::Decode;
use pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rand_core::OsRng;
use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

/// A private key held in memory; zeroized on drop by the underlying crates.
pub(crate) enum KeyMaterial {
    Rsa(Box<RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    /// Zeroized on drop (ed25519-dalek's `zeroize` feature).
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

fn encoding_error(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> Error {
    InvalidInput::KeyEncoding {
        what: what.to_owned(),
        source: Box::new(source),
    }
    .into()
}

impl KeyMaterial {
    /// Generates a key (RSA generation takes from milliseconds to seconds).
    pub(crate) fn generate(alg: KeyAlgorithm) -> Result<Self> {
        Ok(match alg {
            KeyAlgorithm::EcP256 => Self::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
            KeyAlgorithm::EcP384 => Self::P384(p384::ecdsa::SigningKey::random(&mut OsRng)),
            KeyAlgorithm::Ed25519 => {
                Self::Ed25519(Box::new(ed25519_dalek::SigningKey::generate(&mut OsRng)))
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let key = RsaPrivateKey::new(&mut OsRng, alg.bits())
                    .map_err(|e| Error::backend("software keys", Operation::Generate, e))?;
                Self::Rsa(Box::new(key))
            }
            _ => {
                return Err(Unsupported::Algorithm {
                    algorithm: alg,
                    device: "software keys".into(),
                }
                .into());
            }
        })
    }

    /// Decodes a DER PKCS#8 `PrivateKeyInfo` (RSA, EC on P-256 / P-384, or Ed25519).
    pub(crate) fn from_pkcs8_der(der: &[u8], what: &str) -> Result<Self> {
        let info = pkcs8::PrivateKeyInfo::from_der(der).map_err(|e| encoding_error(what, e))?;
        let oid = info.algorithm.oid;
        let material = if oid == RSA_ENCRYPTION {
            let key = RsaPrivateKey::from_pkcs8_der(der).map_err(|e| encoding_error(what, e))?;
            Self::Rsa(Box::new(key))
        } else if oid == EC_PUBLIC_KEY {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|e| encoding_error(what, e))?;
            if curve == SECP256R1 {
                Self::P256(
                    p256::ecdsa::SigningKey::from_pkcs8_der(der)
                        .map_err(|e| encoding_error(what, e))?,
                )
            } else if curve == SECP384R1 {
                Self::P384(
                    p384::ecdsa::SigningKey::from_pkcs8_der(der)
                        .map_err(|e| encoding_error(what, e))?,
                )
            } else {
                return Err(InvalidInput::Malformed {
                    what: "EC private key",
                    reason: "curve is neither P-256 nor P-384",
                }
                .into());
            }
        } else if oid == ED25519 {
            Self::Ed25519(Box::new(
                ed25519_dalek::SigningKey::from_pkcs8_der(der)
                    .map_err(|e| encoding_error(what, e))?,
            ))
        } else if oid == ED448 {
            return Err(Unsupported::Algorithm {
                algorithm: KeyAlgorithm::Ed448,
                device: "software keys (no Ed448 implementation; import it into a token \
                         that has CKM_EDDSA on edwards448)"
                    .into(),
            }
            .into());
        } else {
            return Err(InvalidInput::Malformed {
                what: "private key",
                reason: "algorithm is neither RSA, EC (P-256, P-384) nor Ed25519",
            }
            .into());
        };
        material.check_size()?;
        Ok(material)
    }

    /// Decodes a PEM private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
    /// (`EC PRIVATE KEY`), as `openssl genpkey`, `genrsa` and `ecparam -genkey` write them.
    pub(crate) fn from_pem(pem: &str, what: &str) -> Result<Self> {
        let (label, der) = private_key_block(pem, what)?;
        let material = match label.as_str() {
            "PRIVATE KEY" => return Self::from_pkcs8_der(&der, what),
            "RSA PRIVATE KEY" => Self::Rsa(Box::new(
                RsaPrivateKey::from_pkcs1_der(&der).map_err(|e| encoding_error(what, e))?,
            )),
            "EC PRIVATE KEY" => {
                if let Ok(k) = p256::SecretKey::from_sec1_der(&der) {
                    Self::P256(k.into())
                } else {
                    let k = p384::SecretKey::from_sec1_der(&der).map_err(|_| {
                        Error::from(InvalidInput::Malformed {
                            what: "EC private key",
                            reason: "not a SEC1 key on P-256 or P-384",
                        })
                    })?;
                    Self::P384(k.into())
                }
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(InvalidInput::Malformed {
                    what: "private key file",
                    reason: "it is an encrypted PKCS#8 key; decrypt it first \
                             (openssl pkcs8 -in KEY -out PLAIN.pem) or import it into a token",
                }
                .into());
            }
            _ => {
                return Err(InvalidInput::Malformed {
                    what: "private key file",
                    reason: "expected a PEM 'PRIVATE KEY', 'RSA PRIVATE KEY' or 'EC PRIVATE KEY'",
                }
                .into());
            }
        };
        material.check_size()?;
        Ok(material)
    }

    fn check_size(&self) -> Result<()> {
        match self {
            Self::Rsa(k) => match KeyAlgorithm::rsa_with_bits(k.n().bits()) {
                Some(_) => Ok(()),
                None => Err(InvalidInput::Malformed {
                    what: "RSA private key",
                    reason: "modulus size is not 2048, 3072 or 4096 bits",
                }
                .into()),
            },
            Self::P256(_) | Self::P384(_) | Self::Ed25519(_) => Ok(()),
        }
    }

    /// The PKCS#8 PEM encoding, zeroized on drop.
    pub(crate) fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>> {
        let pem = match self {
            Self::Rsa(k) => k.to_pkcs8_pem(LineEnding::LF),
            Self::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            Self::P384(k) => k.to_pkcs8_pem(LineEnding::LF),
            // PKCS#8 v1 (no public key, RFC 8410 section 7): OpenSSL 3.0 cannot read the v2
            // form ed25519-dalek writes by itself.
            Self::Ed25519(k) => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: k.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_pem(LineEnding::LF),
        };
        pem.map_err(|e| encoding_error("private key for writing", e))
    }

    /// The public key.
    pub(crate) fn public_key(&self) -> Result<PublicKey> {
        let der = match self {
            Self::Rsa(k) => k.to_public_key().to_public_key_der(),
            Self::P256(k) => p256::PublicKey::from(k.verifying_key()).to_public_key_der(),
            Self::P384(k) => p384::PublicKey::from(k.verifying_key()).to_public_key_der(),
            Self::Ed25519(k) => k.verifying_key().to_public_key_der(),
        }
        .map_err(|e| encoding_error("public key", e))?;
        PublicKey::from_spki_der(der.as_bytes())
    }

    /// The key's algorithm (sizes are checked when the material is made or decoded).
    pub(crate) fn algorithm(&self) -> KeyAlgorithm {
        match self {
            Self::Rsa(k) => {
                KeyAlgorithm::rsa_with_bits(k.n().bits()).unwrap_or(KeyAlgorithm::Rsa2048)
            }
            Self::P256(_) => KeyAlgorithm::EcP256,
            Self::P384(_) => KeyAlgorithm::EcP384,
            Self::Ed25519(_) => KeyAlgorithm::Ed25519,
        }
    }
}

const KEY_LABELS: [&str; 4] = [
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];

/// The first private-key block of a PEM file, skipping others (`openssl ecparam -genkey`
/// writes an `EC PARAMETERS` block first; a bundle may hold certificates). Each block is
/// decoded by der's PEM decoder; the scan is not rustls-pki-types' because its 1.15 reader
/// copies the base64 into a buffer it does not zeroize and skips `ENCRYPTED PRIVATE KEY`
/// blocks (which must get their own message here).
fn private_key_block(pem: &str, what: &str) -> Result<(String, Zeroizing<Vec<u8>>)> {
    let mut rest = pem;
    let mut seen = Vec::new();
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        // The block ends with the dashes closing its "-----END <label>-----" line.
        let end = block
            .find("-----END ")
            .and_then(|e| block[e + 9..].find("-----").map(|d| e + 9 + d + 5))
            .unwrap_or(block.len());
        let (label, der) = pkcs8::der::pem::decode_vec(&block.as_bytes()[..end])
            .map_err(|e| encoding_error(what, pkcs8::der::Error::from(e)))?;
        let der = Zeroizing::new(der);
        if KEY_LABELS.contains(&label) {
            return Ok((label.to_owned(), der));
        }
        seen.push(label.to_owned());
        rest = &block[end..];
    }
    Err(InvalidInput::KeyEncoding {
        what: what.to_owned(),
        source: if seen.is_empty() {
            "no PEM block found: expected a 'PRIVATE KEY' PEM file".into()
        } else {
            format!("no private key among its PEM blocks ({})", seen.join(", ")).into()
        },
    }
    .into())
}
