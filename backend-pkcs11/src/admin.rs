//! Token administration: list tokens and slots, token details, initialize a token, set and
//! change PINs. Each call opens a short-lived session and blocks: these are operator commands
//! (`hardkey token ...`), not the signing path.

use std::path::Path;
use std::sync::Arc;

use cryptoki::context::Function;
use cryptoki::error::RvError;
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use hardkey_api::uri::Pkcs11Uri;
use hardkey_api::{Error, InvalidInput, Operation, Result};
use secrecy::SecretString;

use crate::error::{is_rv, mapper};
use crate::module::{self, Module};
use crate::token::{self, TokenSummary};

/// Which PIN to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinRole {
    /// The user PIN, which unlocks the keys.
    User,
    /// The Security Officer PIN, which administers the token.
    SecurityOfficer,
}

/// A slot as the module reports it, with or without a token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotSummary {
    /// Slot id.
    pub slot_id: u64,
    /// Slot description.
    pub description: String,
    /// Slot manufacturer.
    pub manufacturer: String,
    /// The token in it, if any.
    pub token: Option<TokenSummary>,
}

/// A token's state, as `C_GetTokenInfo` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenDetails {
    /// Label, serial, manufacturer, model, initialized flags.
    pub summary: TokenSummary,
    /// Keys need a login.
    pub login_required: bool,
    /// A wrong user PIN was entered since the last success.
    pub user_pin_count_low: bool,
    /// One more wrong user PIN locks it.
    pub user_pin_final_try: bool,
    /// The user PIN is locked.
    pub user_pin_locked: bool,
    /// The user PIN must be changed before use.
    pub user_pin_to_be_changed: bool,
    /// One more wrong SO PIN locks it.
    pub so_pin_final_try: bool,
    /// The SO PIN is locked.
    pub so_pin_locked: bool,
    /// PIN length bounds.
    pub pin_length: (usize, usize),
    /// Sessions open now (all applications), if the token says.
    pub sessions: Option<u64>,
}

/// Administration of the tokens of one PKCS#11 module.
pub struct TokenAdmin {
    module: Arc<Module>,
}

impl std::fmt::Debug for TokenAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAdmin")
            .field("module", &self.module.path)
            .finish()
    }
}

fn auth_target(token: &TokenSummary, role: &str) -> String {
    format!("{role} of token '{}'", token.label)
}

impl TokenAdmin {
    /// Loads the module (`None`: SoftHSM from its usual paths).
    pub fn new(module: Option<&Path>) -> Result<Self> {
        Ok(Self {
            module: module::load(module, None)?,
        })
    }

    fn device(&self) -> String {
        self.module.path.display().to_string()
    }

    /// The initialized tokens.
    pub fn tokens(&self) -> Result<Vec<TokenSummary>> {
        let _calls = self.module.calls();
        Ok(token::tokens(&self.module)?
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| t.initialized)
            .collect())
    }

    /// Every slot, with its token if one is present.
    pub fn slots(&self) -> Result<Vec<SlotSummary>> {
        let _calls = self.module.calls();
        let device = self.device();
        let map = mapper(&device, Operation::Admin);
        let with_tokens = token::tokens(&self.module)?;
        let mut out = Vec::new();
        for slot in self.module.ctx.get_all_slots().map_err(&map)? {
            let info = self.module.ctx.get_slot_info(slot).map_err(&map)?;
            out.push(SlotSummary {
                slot_id: slot.id(),
                description: info.slot_description().trim_end().to_owned(),
                manufacturer: info.manufacturer_id().trim_end().to_owned(),
                token: with_tokens
                    .iter()
                    .find(|(s, _)| *s == slot)
                    .map(|(_, t)| t.clone()),
            });
        }
        Ok(out)
    }

    /// Details of the token a URI names.
    pub fn details(&self, token: &Pkcs11Uri) -> Result<TokenDetails> {
        let _calls = self.module.calls();
        let (slot, summary) = token::find(&self.module, token)?;
        let info = self
            .module
            .ctx
            .get_token_info(slot)
            .map_err(mapper(&self.device(), Operation::Admin))?;
        Ok(TokenDetails {
            summary,
            login_required: info.login_required(),
            user_pin_count_low: info.user_pin_count_low(),
            user_pin_final_try: info.user_pin_final_try(),
            user_pin_locked: info.user_pin_locked(),
            user_pin_to_be_changed: info.user_pin_to_be_changed(),
            so_pin_final_try: info.so_pin_final_try(),
            so_pin_locked: info.so_pin_locked(),
            pin_length: (info.min_pin_length(), info.max_pin_length()),
            sessions: info.session_count(),
        })
    }

    /// Initializes the token in slot `slot_id` with `label` and the SO PIN.
    ///
    /// A token that is already initialized is refused unless `reinitialize` is set:
    /// initializing destroys every key on it. hardkey never initializes a token on its own,
    /// however uninitialized it looks.
    pub fn init_token(
        &self,
        slot_id: u64,
        label: &str,
        so_pin: &SecretString,
        reinitialize: bool,
    ) -> Result<TokenSummary> {
        let _calls = self.module.calls();
        let device = self.device();
        let map = mapper(&device, Operation::Admin);
        if label.is_empty() || label.len() > 32 {
            return Err(InvalidInput::Config {
                what: "token label",
                reason: "must be 1 to 32 bytes",
            }
            .into());
        }
        let slot = Slot::try_from(slot_id).map_err(&map)?;
        let info = self.module.ctx.get_token_info(slot).map_err(|e| {
            if is_rv(&e, RvError::SlotIdInvalid, None) {
                Error::not_found(
                    format!("slot {slot_id} of {device}"),
                    "list the slots (hardkey token list --slots)",
                )
            } else {
                map(e)
            }
        })?;
        if info.token_initialized() && !reinitialize {
            return Err(InvalidInput::AlreadyExists {
                what: format!(
                    "an initialized token ('{}') in slot {slot_id}",
                    info.label().trim_end()
                ),
                remedy: "initializing would destroy its keys; pass --reinitialize if that is \
                         what you want, or pick an empty slot",
            }
            .into());
        }
        // Re-initializing checks the SO PIN: a wrong one on the final try would lock the SO
        // out for good, so, as for logins, hardkey makes no attempt then.
        if info.token_initialized() && (info.so_pin_locked() || info.so_pin_final_try()) {
            return Err(Error::PinLocked {
                target: format!("SO PIN of token '{}'", info.label().trim_end()),
                remedy: if info.so_pin_locked() {
                    "it is locked: the token cannot be re-initialized with it (see the \
                     token vendor's recovery procedure)"
                } else {
                    "one attempt is left, so hardkey will not try: check the SO PIN first"
                },
                source: None,
            });
        }
        self.module
            .ctx
            .init_token(slot, so_pin, label)
            .map_err(|e| map_auth(e, &format!("SO PIN of slot {slot_id}"), &device))?;
        // Some modules (SoftHSM) give an initialized token a new slot: find it by label.
        let tokens = token::tokens(&self.module)?;
        tokens
            .into_iter()
            .map(|(_, t)| t)
            .rfind(|t| t.initialized && t.label == label)
            .ok_or_else(|| Error::not_found(label, "the token vanished after initialization"))
    }

    /// Sets the user PIN of the token a URI names, logged in as the SO (`C_InitPIN`): also the
    /// way to unlock a locked user PIN.
    pub fn init_pin(
        &self,
        token: &Pkcs11Uri,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<()> {
        let _calls = self.module.calls();
        let (slot, summary) = token::find(&self.module, token)?;
        let session = self.session(slot)?;
        let logged_in = self.login(slot, &session, &summary, UserType::So, so_pin)?;
        let result = session
            .init_pin(user_pin)
            .map_err(mapper(&self.device(), Operation::Admin));
        if logged_in {
            let _ = session.logout();
        }
        result
    }

    /// Changes the user or SO PIN (`C_SetPIN`), logged in with the old one.
    pub fn change_pin(
        &self,
        token: &Pkcs11Uri,
        role: PinRole,
        old: &SecretString,
        new: &SecretString,
    ) -> Result<()> {
        let _calls = self.module.calls();
        let (slot, summary) = token::find(&self.module, token)?;
        let session = self.session(slot)?;
        let user = match role {
            PinRole::User => UserType::User,
            PinRole::SecurityOfficer => UserType::So,
        };
        let logged_in = self.login(slot, &session, &summary, user, old)?;
        let result = session
            .set_pin(old, new)
            .map_err(|e| map_auth(e, &auth_target(&summary, role_name(role)), &self.device()));
        // Logging out ends the login for every session of this process (a store's too): only
        // undo a login this call made.
        if logged_in {
            let _ = session.logout();
        }
        result
    }

    fn session(&self, slot: Slot) -> Result<Session> {
        self.module
            .ctx
            .open_rw_session(slot)
            .map_err(mapper(&self.device(), Operation::Admin))
    }

    /// Logs in as `user`; returns whether this call did (false: already logged in). Makes no
    /// attempt when that PIN is locked or on its final try.
    fn login(
        &self,
        slot: Slot,
        session: &Session,
        token: &TokenSummary,
        user: UserType,
        pin: &SecretString,
    ) -> Result<bool> {
        let so = matches!(user, UserType::So);
        let role = if so { "SO PIN" } else { "user PIN" };
        let info = self
            .module
            .ctx
            .get_token_info(slot)
            .map_err(mapper(&self.device(), Operation::Admin))?;
        let (locked, final_try) = if so {
            (info.so_pin_locked(), info.so_pin_final_try())
        } else {
            (info.user_pin_locked(), info.user_pin_final_try())
        };
        if locked || final_try {
            return Err(Error::PinLocked {
                target: auth_target(token, role),
                remedy: if locked {
                    "it is locked: the user PIN is unlocked with the SO PIN (hardkey token \
                     init-pin); a locked SO PIN means re-initializing the token"
                } else {
                    "one attempt is left, so hardkey will not try: check the PIN first"
                },
                source: None,
            });
        }
        match session.login(user, Some(pin)) {
            Ok(()) => Ok(true),
            Err(e) if is_rv(&e, RvError::UserAlreadyLoggedIn, Some(Function::Login)) => Ok(false),
            Err(e) if is_rv(&e, RvError::UserAnotherAlreadyLoggedIn, None) => {
                Err(InvalidInput::Config {
                    what: "token login",
                    reason: "another application (a server using this token?) is logged in to \
                             it as the other PIN role; stop it, then retry",
                }
                .into())
            }
            Err(e) => Err(map_auth(e, &auth_target(token, role), &self.device())),
        }
    }
}

fn role_name(role: PinRole) -> &'static str {
    match role {
        PinRole::User => "user PIN",
        PinRole::SecurityOfficer => "SO PIN",
    }
}

/// Maps an error, naming `target` (e.g. "SO PIN of token 'web'") in auth errors.
fn map_auth(e: cryptoki::error::Error, target: &str, device: &str) -> Error {
    match crate::error::map(device, Operation::Admin, e) {
        Error::AuthFailed { source, .. } => Error::AuthFailed {
            target: target.to_owned(),
            source,
        },
        Error::PinLocked { remedy, source, .. } => Error::PinLocked {
            target: target.to_owned(),
            remedy,
            source,
        },
        other => other,
    }
}
