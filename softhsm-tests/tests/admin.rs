//! Token administration on SoftHSM: list tokens and slots, initialize a token in a free slot,
//! set the user PIN with the SO PIN, change both PINs; refuse to initialize a token that
//! already is; wrong PINs are auth errors naming which PIN.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "test code")]

use std::sync::Arc;

use futures::executor::block_on;
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{ErrorKind, GenerateRequest, KeyAlgorithm, KeyStore};
use hardkey_pkcs11::{PinRole, PinSource, Pkcs11Config, Pkcs11Store, TokenAdmin};
use secrecy::SecretString;
use softhsm_tests::{SoftHsm, run_serial, trial};

fn open(hsm: &SoftHsm, label: &str, pin: &str) -> hardkey_api::Result<Pkcs11Store> {
    Pkcs11Store::open(
        Pkcs11Config::new(
            Pkcs11Uri::new().with_token(label),
            PinSource::Value(SecretString::from(pin)),
        )
        .module(hsm.module())
        .sessions(1),
    )
}

/// Closes a store and waits for its workers to log out: dropping it only asks them to, and
/// while a user session is still open the SO cannot log in (`CKR_USER_ANOTHER_ALREADY_LOGGED_IN`).
fn close(store: Pkcs11Store) {
    let report = store.pool().shutdown(std::time::Duration::from_secs(5));
    assert_eq!(report.detached_workers, 0, "{report:?}");
}

fn lists_tokens_and_slots(hsm: &SoftHsm) {
    let admin = TokenAdmin::new(Some(hsm.module())).unwrap();
    let tokens = admin.tokens().unwrap();
    assert!(tokens.iter().any(|t| t.label == hsm.label()), "{tokens:?}");
    let slots = admin.slots().unwrap();
    assert!(
        slots
            .iter()
            .any(|s| s.token.as_ref().is_some_and(|t| !t.initialized)),
        "SoftHSM always offers a free slot: {slots:?}"
    );
    let details = admin.details(&hsm.token_uri()).unwrap();
    assert!(details.login_required && !details.user_pin_locked && !details.user_pin_final_try);
    assert_eq!(details.summary.label, hsm.label());
}

fn init_token_and_manage_pins(hsm: &SoftHsm) {
    let admin = TokenAdmin::new(Some(hsm.module())).unwrap();
    let free = admin
        .slots()
        .unwrap()
        .into_iter()
        .find(|s| s.token.as_ref().is_some_and(|t| !t.initialized))
        .expect("a free slot");
    let label = format!("hk-admin-{}", std::process::id());
    let so = SecretString::from("so-pin-1");
    let token = admin.init_token(free.slot_id, &label, &so, false).unwrap();
    assert!(token.initialized && !token.user_pin_initialized);
    let uri = Pkcs11Uri::new().with_token(label.clone());

    // The user PIN is set by the SO; then the token serves keys.
    admin
        .init_pin(&uri, &so, &SecretString::from("user-pin-1"))
        .unwrap();
    let store = open(hsm, &label, "user-pin-1").unwrap();
    block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("k"))).unwrap();
    close(store);

    // Change the user PIN: the old one stops working, the new one works.
    let err = admin
        .change_pin(
            &uri,
            PinRole::User,
            &SecretString::from("wrong"),
            &SecretString::from("x"),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed);
    assert!(err.to_string().contains("user PIN of token"), "{err}");
    admin
        .change_pin(
            &uri,
            PinRole::User,
            &SecretString::from("user-pin-1"),
            &SecretString::from("user-pin-2"),
        )
        .unwrap();
    assert_eq!(
        open(hsm, &label, "user-pin-1").unwrap_err().kind(),
        ErrorKind::AuthFailed
    );
    let store = open(hsm, &label, "user-pin-2").unwrap();
    assert_eq!(
        block_on(store.list()).unwrap().len(),
        1,
        "the key survived the PIN change"
    );
    close(store);

    // Change the SO PIN; a wrong SO PIN is an auth error naming the SO PIN.
    admin
        .change_pin(
            &uri,
            PinRole::SecurityOfficer,
            &so,
            &SecretString::from("so-pin-2"),
        )
        .unwrap();
    let err = admin
        .init_pin(&uri, &so, &SecretString::from("user-pin-3"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    assert!(err.to_string().contains("SO PIN"), "{err}");
    // The SO resets the user PIN (how a locked user PIN is unlocked).
    admin
        .init_pin(
            &uri,
            &SecretString::from("so-pin-2"),
            &SecretString::from("user-pin-3"),
        )
        .unwrap();
    assert!(open(hsm, &label, "user-pin-3").is_ok());
}

fn refuses_to_initialize_an_initialized_token(hsm: &SoftHsm) {
    let admin = TokenAdmin::new(Some(hsm.module())).unwrap();
    let store = hsm.store(1);
    let key = block_on(store.generate(GenerateRequest::new(KeyAlgorithm::EcP256).label("keep-me")))
        .unwrap();
    let slot = store.token().slot_id;
    let err = admin
        .init_token(slot, "overwrite", hsm.so_pin(), false)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("--reinitialize"), "{err}");
    // Nothing changed: the key is still there.
    let again = block_on(store.open_id(&hardkey_api::PrivateKey::info(&key).id)).unwrap();
    assert_eq!(
        hardkey_api::PrivateKey::info(&again).label.as_deref(),
        Some("keep-me")
    );
}

fn main() -> std::process::ExitCode {
    run_serial(|hsm: Arc<SoftHsm>| {
        let (a, b, c) = (Arc::clone(&hsm), Arc::clone(&hsm), Arc::clone(&hsm));
        vec![
            trial("lists_tokens_and_slots", move || lists_tokens_and_slots(&a)),
            trial("init_token_and_manage_pins", move || {
                init_token_and_manage_pins(&b)
            }),
            trial("refuses_to_initialize_an_initialized_token", move || {
                refuses_to_initialize_an_initialized_token(&c)
            }),
        ]
    })
}
