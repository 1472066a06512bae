//! The ceiling of a swtpm's signature rate: one tss-esapi context, a key loaded once,
//! `TPM2_Sign` back to back. Benchmarks compare hardkey (and TLS servers on hardkey) with it.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hardkey_api::{HashAlgorithm, SignatureScheme, encoding};
use hardkey_tpm::KeyFile;
use tss_esapi::Context;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, HashScheme, HashcheckTicket, SignatureScheme as TpmScheme};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use crate::{Swtpm, fail};

/// What [`raw_sign_loop`] measured.
#[derive(Clone, Copy, Debug)]
pub struct RawRate {
    /// Signatures per second.
    pub per_second: f64,
    /// Median time of one `TPM2_Sign`.
    pub p50: Duration,
    /// 99th percentile time of one `TPM2_Sign`.
    pub p99: Duration,
}

/// The owner primary as tpm2-openssl builds it (the parent of hardkey's key files).
fn srk(ctx: &mut Context) -> KeyHandle {
    let public = hardkey_tpm::srk_template().unwrap_or_else(|e| fail("SRK template", e));
    ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.create_primary(Hierarchy::Owner, public, None, None, None, None)
    })
    .unwrap_or_else(|e| fail("TPM2_CreatePrimary", e))
    .key_handle
}

/// Loads the key in `key_file` (a hardkey / tpm2-openssl TSS2 key file, no auth value) on its
/// own context and signs with `scheme` (ECDSA or RSASSA with SHA-256) back to back for
/// `duration`. Make room first: the key takes one of the TPM's object slots.
pub fn raw_sign_loop(
    tpm: &Swtpm,
    key_file: &Path,
    scheme: SignatureScheme,
    duration: Duration,
) -> RawRate {
    let tcti = TctiNameConf::from_str(&tpm.tcti()).unwrap_or_else(|e| fail("TCTI", e));
    let mut ctx = Context::new(tcti).unwrap_or_else(|e| fail("tss-esapi context", e));
    let text = std::fs::read_to_string(key_file).unwrap_or_else(|e| fail("key file", e));
    let file = KeyFile::from_pem(&text, "raw loop").unwrap_or_else(|e| fail("key file", e));
    let parent = srk(&mut ctx);
    let key = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.load(parent, file.private.clone(), file.public.clone())
        })
        .unwrap_or_else(|e| fail("TPM2_Load", e));
    ctx.flush_context(parent.into())
        .unwrap_or_else(|e| fail("flush", e));
    let digest = Digest::try_from(encoding::digest(
        scheme.hash().unwrap_or(HashAlgorithm::Sha256),
        b"bench",
    ))
    .unwrap_or_else(|e| fail("digest", e));
    let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .unwrap_or_else(|e| fail("ticket", e));
    let hash_scheme = HashScheme::new(HashingAlgorithm::Sha256);
    let tpm_scheme = match scheme {
        SignatureScheme::EcdsaP256Sha256 => TpmScheme::EcDsa { hash_scheme },
        _ => TpmScheme::RsaSsa { hash_scheme },
    };
    ctx.set_sessions((Some(AuthSession::Password), None, None));
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        ctx.sign(key, digest.clone(), tpm_scheme, ticket.clone())
            .unwrap_or_else(|e| fail("TPM2_Sign", e));
        times.push(t.elapsed());
    }
    let per_second = times.len() as f64 / start.elapsed().as_secs_f64();
    ctx.clear_sessions();
    ctx.flush_context(key.into())
        .unwrap_or_else(|e| fail("flush", e));
    times.sort();
    let at = |p: f64| {
        let i = ((times.len().saturating_sub(1)) as f64 * p).round() as usize;
        times.get(i).copied().unwrap_or_default()
    };
    RawRate {
        per_second,
        p50: at(0.5),
        p99: at(0.99),
    }
}
