//! Finding the slot whose token a URI names, and describing tokens in errors.

use cryptoki::mechanism::MechanismType;
use cryptoki::slot::Slot;
use hardkey_api::uri::{Pkcs11Uri, TokenAttrs};
use hardkey_api::{Error, KeyAlgorithm, KeyFamily, Operation, Result};

use crate::error::mapper;
use crate::module::Module;

/// A token as its slot reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenSummary {
    /// The slot id.
    pub slot_id: u64,
    /// Token label (trailing spaces removed).
    pub label: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Whether the token has been initialized.
    pub initialized: bool,
    /// Whether the user PIN has been set.
    pub user_pin_initialized: bool,
}

/// Lists the tokens a module's slots hold.
pub(crate) fn tokens(module: &Module) -> Result<Vec<(Slot, TokenSummary)>> {
    let device = module.path.display().to_string();
    let map = mapper(&device, Operation::Connect);
    let mut out = Vec::new();
    for slot in module.ctx.get_slots_with_token().map_err(&map)? {
        let info = module.ctx.get_token_info(slot).map_err(&map)?;
        out.push((
            slot,
            TokenSummary {
                slot_id: slot.id(),
                label: info.label().trim_end().to_owned(),
                manufacturer: info.manufacturer_id().trim_end().to_owned(),
                model: info.model().trim_end().to_owned(),
                serial: info.serial_number().trim_end().to_owned(),
                initialized: info.token_initialized(),
                user_pin_initialized: info.user_pin_initialized(),
            },
        ));
    }
    Ok(out)
}

/// The one initialized token the URI names; an error listing the tokens present otherwise.
pub(crate) fn find(module: &Module, uri: &Pkcs11Uri) -> Result<(Slot, TokenSummary)> {
    let select = |all: &[(Slot, TokenSummary)]| -> Vec<(Slot, TokenSummary)> {
        all.iter()
            .filter(|(slot, t)| {
                t.initialized
                    && uri.matches_slot(slot.id(), "", "")
                    && uri.matches_token(&TokenAttrs {
                        label: &t.label,
                        manufacturer: &t.manufacturer,
                        serial: &t.serial,
                        model: &t.model,
                    })
            })
            .cloned()
            .collect()
    };
    let mut all = tokens(module)?;
    let mut matching = select(&all);
    if matching.is_empty() {
        // A token another process is initializing (or SoftHSM renumbering its slots while
        // another process writes its token directory) can be missed by one enumeration:
        // look once more before saying it is not there.
        std::thread::sleep(std::time::Duration::from_millis(50));
        all = tokens(module)?;
        matching = select(&all);
    }
    let present = || {
        let list: Vec<String> = all
            .iter()
            .filter(|(_, t)| t.initialized)
            .map(|(_, t)| format!("'{}' (serial {}, slot {})", t.label, t.serial, t.slot_id))
            .collect();
        if all.is_empty() {
            // Not even an empty slot: the module reaches nothing.
            "none, and no slot at all: the module reaches no device (for a remote module such \
             as p11-kit-client.so, its server is unreachable: check that it runs and \
             P11_KIT_SERVER_ADDRESS)"
                .to_owned()
        } else if list.is_empty() {
            "none (initialize one with hardkey token init)".to_owned()
        } else {
            list.join(", ")
        }
    };
    let mut found = matching.into_iter();
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(Error::NotFound {
            selector: format!(
                "{uri} in {}: tokens present: {}",
                module.path.display(),
                present()
            ),
            hint: "name the token with token=LABEL or serial=SERIAL",
        }),
        (Some(_), Some(_)) => Err(Error::NotFound {
            selector: format!("a single token: {uri} matches several of {}", present()),
            hint: "add token=LABEL or serial=SERIAL to the URI to choose one",
        }),
    }
}

/// The key algorithms the token can generate, from the key sizes of its
/// `CKM_RSA_PKCS_KEY_PAIR_GEN` and `CKM_EC_KEY_PAIR_GEN` (`C_GetMechanismInfo`): tpm2-pkcs11
/// 1.9 says RSA 1024..3072, so it gets no RSA-4096. Ed25519 and Ed448 need both
/// `CKM_EC_EDWARDS_KEY_PAIR_GEN` and `CKM_EDDSA`, with key sizes 256 and 456 in range
/// (SoftHSM 2.6 lists 256..456; tpm2-pkcs11 and NSS 3.87 list neither). A token that lists no mechanisms at all,
/// or whose list cannot be read, gets every algorithm (its own errors then say what it
/// cannot do); a size range of 0..0 (not reported) allows every size.
pub(crate) fn key_algorithms(module: &Module, slot: Slot) -> Vec<KeyAlgorithm> {
    let Ok(listed) = module.ctx.get_mechanism_list(slot) else {
        return KeyAlgorithm::ALL.to_vec();
    };
    if listed.is_empty() {
        return KeyAlgorithm::ALL.to_vec();
    }
    let range = |mechanism: MechanismType| -> Option<(usize, usize)> {
        if !listed.contains(&mechanism) {
            return None;
        }
        match module.ctx.get_mechanism_info(slot, mechanism) {
            Ok(info) => Some((info.min_key_size(), info.max_key_size())),
            Err(_) => Some((0, 0)),
        }
    };
    let rsa = range(MechanismType::RSA_PKCS_KEY_PAIR_GEN);
    let ec = range(MechanismType::ECC_KEY_PAIR_GEN);
    let edwards = range(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN)
        .filter(|_| listed.contains(&MechanismType::EDDSA));
    KeyAlgorithm::ALL
        .into_iter()
        .filter(|alg| {
            let sizes = match alg.family() {
                KeyFamily::Rsa => rsa,
                KeyFamily::Ec => ec,
                KeyFamily::EdDsa => edwards,
                _ => None,
            };
            sizes.is_some_and(|(min, max)| {
                // Some tokens give EC sizes in bytes (no curve is under 128 bits).
                let (min, max) = if alg.family() == KeyFamily::Ec && max > 0 && max < 128 {
                    (min * 8, max * 8)
                } else {
                    (min, max)
                };
                (min == 0 && max == 0) || (min..=max).contains(&alg.bits())
            })
        })
        .collect()
}
