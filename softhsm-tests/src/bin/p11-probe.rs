//! `p11-probe`: one raw PKCS#11 call on a key, as any application holding the user PIN could
//! make it, in its own process and through `cryptoki` alone (none of hardkey's code). The
//! tests use it to check what a token really lets a key do, whatever hardkey would allow.
//!
//! Usage: `p11-probe MODULE TOKEN LABEL OPERATION MECHANISM INPUT-FILE`, with the user PIN in
//! `P11_PROBE_PIN`. OPERATION is `sign`, `decrypt`, or `widen` (`C_SetAttributeValue` of
//! CKA_DECRYPT and CKA_DERIVE to true: the mechanism and input are ignored); MECHANISM is `rsa-x509`, `rsa-pkcs`,
//! `oaep-sha1`, `oaep-sha256` or `ecdsa`. Prints the output in hex and exits 0, or prints
//! the return code (`MechanismInvalid (SignInit)`, say) and exits 1; exits 2 on a usage or setup error.
#![allow(clippy::print_stdout, reason = "a command-line tool")]

use std::process::ExitCode;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

fn main() -> ExitCode {
    match run() {
        Ok(Ok(out)) => {
            println!(
                "{}",
                out.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            ExitCode::SUCCESS
        }
        Ok(Err(rv)) => {
            println!("{rv}");
            ExitCode::from(1)
        }
        Err(setup) => {
            eprintln!("p11-probe: {setup}");
            ExitCode::from(2)
        }
    }
}

type Outcome = Result<Result<Vec<u8>, String>, String>;

fn run() -> Outcome {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [module, token, label, operation, mechanism, input] = args.as_slice() else {
        return Err("usage: p11-probe MODULE TOKEN LABEL sign|decrypt MECHANISM INPUT".into());
    };
    let pin = std::env::var("P11_PROBE_PIN").map_err(|_| "set P11_PROBE_PIN".to_owned())?;
    let data = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let oaep =
        |hash, mgf| Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()));
    let mechanism = match mechanism.as_str() {
        "rsa-x509" => Mechanism::RsaX509,
        "rsa-pkcs" => Mechanism::RsaPkcs,
        "oaep-sha1" => oaep(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        "oaep-sha256" => oaep(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        "ecdsa" => Mechanism::Ecdsa,
        other => return Err(format!("unknown mechanism {other}")),
    };
    let ctx = Pkcs11::new(module).map_err(|e| format!("loading {module}: {e}"))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize: {e}"))?;
    let slot = ctx
        .get_slots_with_initialized_token()
        .map_err(|e| format!("C_GetSlotList: {e}"))?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == token)
        })
        .ok_or_else(|| format!("no token {token}"))?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(|e| format!("C_OpenSession: {e}"))?;
    session
        .login(UserType::User, Some(&AuthPin::new(pin.into())))
        .map_err(|e| format!("C_Login: {e}"))?;
    let key = *session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| format!("C_FindObjects: {e}"))?
        .first()
        .ok_or_else(|| format!("no private key labelled {label}"))?;
    let result = match operation.as_str() {
        "sign" => session.sign(&mechanism, key, &data),
        "decrypt" => session.decrypt(&mechanism, key, &data),
        "widen" => session
            .update_attributes(key, &[Attribute::Decrypt(true), Attribute::Derive(true)])
            .map(|()| Vec::new()),
        other => return Err(format!("unknown operation {other}")),
    };
    Ok(result.map_err(|e| match e {
        cryptoki::error::Error::Pkcs11(rv, function) => format!("{rv:?} ({function:?})"),
        other => other.to_string(),
    }))
}
