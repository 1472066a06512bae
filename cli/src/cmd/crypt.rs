//! decrypt (RSA-OAEP on the device) and encrypt (to a key's public key, in software with the
//! `rsa` crate).

use futures::executor::block_on;
use hardkey_api::{DecryptScheme, ErrorKind, InvalidInput, KeyAlgorithm, KeyFamily, PrivateKey};
use serde_json::json;
use zeroize::Zeroizing;

use super::ca::{new_output, write_new};
use super::{Ctx, OutputFile, read_input};
use crate::args::{CryptSchemeArg, DecryptArgs, EncryptArgs};
use crate::error::{CliError, CliResult, failed, usage};
use crate::target::{OpenOptions, Store, Target};

/// What openssl needs to make a ciphertext hardkey decrypts (its OAEP default is SHA-1).
const OPENSSL_OAEP_SHA256: &str = "openssl pkeyutl -encrypt -pubin -inkey PUB.pem -pkeyopt \
     rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256";

/// The scheme named on the command line; OAEP with SHA-1 is refused with what to use.
fn scheme(arg: CryptSchemeArg) -> CliResult<DecryptScheme> {
    match arg {
        CryptSchemeArg::OaepSha256 => Ok(DecryptScheme::RsaOaepSha256),
        CryptSchemeArg::Pkcs1 => Ok(DecryptScheme::RsaPkcs1v15Legacy),
        CryptSchemeArg::OaepSha1 => Err(usage(format!(
            "RSA-OAEP with SHA-1 is not offered by hardkey's devices (TPM, PKCS#11, software): \
             use --scheme oaep-sha256, and with openssl: {OPENSSL_OAEP_SHA256}"
        ))),
    }
}

/// A key that cannot decrypt or be encrypted to, named with what it is.
fn not_rsa(uri: &str, alg: KeyAlgorithm, op: &str) -> CliError {
    usage(format!(
        "{op} needs an RSA key: {uri} is a {alg} key (EC keys only sign); use an RSA key \
         (hardkey keygen --alg rsa2048)"
    ))
}

/// `hardkey decrypt`.
pub(crate) fn decrypt(a: &DecryptArgs, ctx: &Ctx) -> CliResult {
    let scheme = scheme(a.scheme)?;
    let target = Target::parse(&a.key, &ctx.config)?;
    let uri = target.key_uri()?;
    let out = new_output(a.out.as_deref(), "a decrypted plaintext", true)?;
    let ciphertext = read_input(&a.input, "the ciphertext")?;
    let store = Store::open(&target, &ctx.config, &a.secrets, OpenOptions::default())?;
    let key = store.key(&uri)?;
    let info = key.info();
    if info.algorithm.family() != KeyFamily::Rsa {
        return Err(not_rsa(&a.key, info.algorithm, "decrypt"));
    }
    // Scheme, usage and length: public facts, reported as they are.
    info.check_decrypt(scheme, &ciphertext)?;
    let plaintext: Zeroizing<Vec<u8>> = match block_on(key.decrypt(scheme, &ciphertext)) {
        Ok(plain) => plain,
        // Whatever the padding check found, one message: the reason would be an oracle.
        Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::Backend) => {
            let length = matches!(
                e,
                hardkey_api::Error::InvalidInput(InvalidInput::CiphertextLength { .. })
            );
            if length {
                return Err(e.into());
            }
            return Err(failed(format!(
                "decryption failed: the ciphertext was not made for this key with {scheme}, or \
                 was altered (a ciphertext from openssl needs: {OPENSSL_OAEP_SHA256})"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    drop(store);
    match out {
        Some(path) => {
            write_new(&path, &plaintext, "decrypted plaintext", 0o600)?;
            ctx.out.emit(
                json!({ "out": path, "bytes": plaintext.len(), "scheme": scheme.name() }),
                || {
                    format!(
                        "decrypted {} bytes ({scheme}) into {} (mode 0600)",
                        plaintext.len(),
                        crate::output::shown(&path)
                    )
                },
            );
        }
        None => OutputFile::prepare(std::path::Path::new("-"), "the plaintext", &[])?
            .commit(&plaintext)?,
    }
    Ok(())
}

/// `hardkey encrypt`.
pub(crate) fn encrypt(a: &EncryptArgs, ctx: &Ctx) -> CliResult {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;

    let scheme = scheme(a.scheme)?;
    if scheme != DecryptScheme::RsaOaepSha256 {
        return Err(usage(
            "hardkey encrypts only with RSA-OAEP (--scheme oaep-sha256): PKCS#1 v1.5 \
             encryption is legacy",
        ));
    }
    let (public, named) = match (&a.key, &a.pubkey) {
        (Some(key), _) => {
            let target = Target::parse(key, &ctx.config)?;
            let uri = target.key_uri()?;
            let store = Store::open(&target, &ctx.config, &a.secrets, OpenOptions::default())?;
            let public = store.key(&uri)?.info().public_key.clone();
            (public, key.clone())
        }
        (None, Some(path)) => (
            super::sign::read_public_key(path)?,
            crate::output::shown(path),
        ),
        (None, None) => return Err(usage("give the recipient: --key URI or --pubkey FILE")),
    };
    if public.algorithm().family() != KeyFamily::Rsa {
        return Err(not_rsa(&named, public.algorithm(), "encrypt"));
    }
    let out = new_output(a.out.as_deref(), "a ciphertext", true)?;
    let plaintext = read_input(&a.input, "the plaintext")?;
    let key = rsa::RsaPublicKey::from_public_key_der(public.der())
        .map_err(|e| usage(format!("{named} is not an RSA public key: {e}")))?;
    // RFC 8017 section 7.1.1: mLen <= k - 2 hLen - 2.
    let max = key.size().saturating_sub(2 * 32 + 2);
    if plaintext.len() > max {
        return Err(usage(format!(
            "the plaintext is {} bytes, but RSA-OAEP with SHA-256 under a {}-bit key carries at \
             most {max}: encrypt a symmetric key with it, and the data with that key",
            plaintext.len(),
            key.size() * 8
        )));
    }
    let ciphertext = key
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            &plaintext,
        )
        .map_err(|e| failed(format!("RSA-OAEP encryption failed: {e}")))?;
    match out {
        Some(path) => {
            write_new(&path, &ciphertext, "ciphertext", 0o644)?;
            ctx.out.emit(
                json!({ "out": path, "bytes": ciphertext.len(), "scheme": scheme.name() }),
                || {
                    format!(
                        "encrypted {} bytes ({scheme}) into {} ({} bytes)",
                        plaintext.len(),
                        crate::output::shown(&path),
                        ciphertext.len()
                    )
                },
            );
        }
        None => OutputFile::prepare(std::path::Path::new("-"), "the ciphertext", &[])?
            .commit(&ciphertext)?,
    }
    Ok(())
}
