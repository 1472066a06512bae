//! token list, info, init, init-pin, change-pin.

use hardkey_api::uri::Pkcs11Uri;
use hardkey_pkcs11::{PinRole, TokenAdmin, TokenSummary};
use serde_json::json;

use super::Ctx;
use crate::args::{ChangePinArgs, ModuleArgs, TokenCommand, TokenUriArgs};
use crate::error::{CliResult, usage};
use crate::output::table;
use crate::secrets::{self, Missing};
use crate::target::module;

/// `hardkey token ...`.
pub(crate) fn run(command: &TokenCommand, ctx: &Ctx) -> CliResult {
    match command {
        TokenCommand::List(a) => {
            let admin = admin(&a.module, ctx)?;
            if a.slots {
                let slots = admin.slots()?;
                let rows: Vec<Vec<String>> = slots
                    .iter()
                    .map(|s| {
                        vec![
                            s.slot_id.to_string(),
                            match &s.token {
                                Some(t) if t.initialized => format!("token '{}'", t.label),
                                Some(_) => "empty (uninitialized token)".into(),
                                None => "no token".into(),
                            },
                            s.description.clone(),
                        ]
                    })
                    .collect();
                ctx.out.emit(
                    json!({ "slots": slots.iter().map(|s| json!({
                        "slot_id": s.slot_id,
                        "description": s.description,
                        "manufacturer": s.manufacturer,
                        "token": s.token.as_ref().map(token_json),
                    })).collect::<Vec<_>>() }),
                    || table(&["SLOT", "CONTENT", "DESCRIPTION"], &rows),
                );
            } else {
                let tokens = admin.tokens()?;
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.slot_id.to_string(),
                            t.label.clone(),
                            t.serial.clone(),
                            format!("{} {}", t.manufacturer, t.model),
                            if t.user_pin_initialized {
                                "set".into()
                            } else {
                                "not set".into()
                            },
                        ]
                    })
                    .collect();
                ctx.out.emit(
                    json!({ "tokens": tokens.iter().map(token_json).collect::<Vec<_>>() }),
                    || {
                        if tokens.is_empty() {
                            "no initialized tokens (hardkey token list --slots shows free slots)"
                                .into()
                        } else {
                            table(&["SLOT", "LABEL", "SERIAL", "MODEL", "USER PIN"], &rows)
                        }
                    },
                );
            }
            Ok(())
        }
        TokenCommand::Info(a) => {
            let (admin, uri) = token(a, ctx)?;
            let d = admin.details(&uri)?;
            let flag = |b: bool| if b { "yes" } else { "no" };
            ctx.out.emit(
                json!({
                    "token": token_json(&d.summary),
                    "login_required": d.login_required,
                    "user_pin_count_low": d.user_pin_count_low,
                    "user_pin_final_try": d.user_pin_final_try,
                    "user_pin_locked": d.user_pin_locked,
                    "user_pin_to_be_changed": d.user_pin_to_be_changed,
                    "so_pin_final_try": d.so_pin_final_try,
                    "so_pin_locked": d.so_pin_locked,
                    "pin_length": [d.pin_length.0, d.pin_length.1],
                    "sessions": d.sessions,
                }),
                || {
                    format!(
                        "token:            '{}' (slot {}, serial {})\nmodel:            {} {}\n\
                         user PIN set:     {}\nlogin required:   {}\nuser PIN locked:  {}{}\n\
                         SO PIN locked:    {}{}\nPIN length:       {}..{}\nsessions open:    {}",
                        d.summary.label,
                        d.summary.slot_id,
                        d.summary.serial,
                        d.summary.manufacturer,
                        d.summary.model,
                        flag(d.summary.user_pin_initialized),
                        flag(d.login_required),
                        flag(d.user_pin_locked),
                        if d.user_pin_final_try {
                            " (one try left)"
                        } else if d.user_pin_count_low {
                            " (a wrong PIN was entered)"
                        } else {
                            ""
                        },
                        flag(d.so_pin_locked),
                        if d.so_pin_final_try {
                            " (one try left)"
                        } else {
                            ""
                        },
                        d.pin_length.0,
                        d.pin_length.1,
                        d.sessions
                            .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
                    )
                },
            );
            Ok(())
        }
        TokenCommand::Init(a) => {
            let admin = admin(&a.module, ctx)?;
            let so = secrets::resolve(
                secrets::SO_PIN,
                a.so_pin_file.as_deref(),
                Missing::PromptNew,
                None,
            )?;
            let so = secrets::value(secrets::SO_PIN, &so)?;
            let t = admin.init_token(a.slot, &a.label, &so, a.reinitialize)?;
            ctx.out.emit(token_json(&t), || {
                format!(
                    "initialized token '{}' (slot {}); set its user PIN with: hardkey token \
                     init-pin pkcs11:token={}",
                    t.label, t.slot_id, t.label
                )
            });
            Ok(())
        }
        TokenCommand::InitPin(a) => {
            let (admin, uri) = token(&a.token, ctx)?;
            let so = secrets::resolve(
                secrets::SO_PIN,
                a.so_pin_file.as_deref(),
                Missing::Prompt,
                None,
            )?;
            let new = secrets::resolve(
                secrets::NEW_PIN,
                a.new_pin_file.as_deref(),
                Missing::PromptNew,
                None,
            )?;
            admin.init_pin(
                &uri,
                &secrets::value(secrets::SO_PIN, &so)?,
                &secrets::value(secrets::NEW_PIN, &new)?,
            )?;
            ctx.out
                .emit(json!({ "user_pin_set": uri.to_string() }), || {
                    format!("user PIN of {uri} set")
                });
            Ok(())
        }
        TokenCommand::ChangePin(a) => change_pin(a, ctx),
    }
}

fn change_pin(a: &ChangePinArgs, ctx: &Ctx) -> CliResult {
    let (admin, uri) = token(&a.token, ctx)?;
    let (role, secret, file) = if a.so {
        (PinRole::SecurityOfficer, secrets::SO_PIN, &a.so_pin_file)
    } else {
        if a.so_pin_file.is_some() {
            return Err(usage(
                "--so-pin-file is for --so; the user PIN is changed with --pin-file",
            ));
        }
        (PinRole::User, secrets::USER_PIN, &a.pin_file)
    };
    let old = secrets::resolve(secret, file.as_deref(), Missing::Prompt, None)?;
    let new = secrets::resolve(
        secrets::NEW_PIN,
        a.new_pin_file.as_deref(),
        Missing::PromptNew,
        None,
    )?;
    admin.change_pin(
        &uri,
        role,
        &secrets::value(secret, &old)?,
        &secrets::value(secrets::NEW_PIN, &new)?,
    )?;
    ctx.out.emit(
        json!({ "changed": secret.name, "token": uri.to_string() }),
        || format!("{} of {uri} changed", secret.name),
    );
    Ok(())
}

fn admin(m: &ModuleArgs, ctx: &Ctx) -> CliResult<TokenAdmin> {
    Ok(TokenAdmin::new(
        module(m.module.as_ref(), &ctx.config).as_deref(),
    )?)
}

fn token(a: &TokenUriArgs, ctx: &Ctx) -> CliResult<(TokenAdmin, Pkcs11Uri)> {
    let text = ctx.config.expand(&a.uri)?;
    let uri: Pkcs11Uri = text
        .parse()
        .map_err(|e| usage(format!("{e}; a token is named like pkcs11:token=LABEL")))?;
    let module = a
        .module
        .module
        .clone()
        .or_else(|| uri.module_path().map(Into::into));
    let admin = TokenAdmin::new(
        module
            .or_else(|| ctx.config.pkcs11.module.clone())
            .as_deref(),
    )?;
    Ok((admin, uri))
}

fn token_json(t: &TokenSummary) -> serde_json::Value {
    json!({
        "slot_id": t.slot_id,
        "label": t.label,
        "manufacturer": t.manufacturer,
        "model": t.model,
        "serial": t.serial,
        "initialized": t.initialized,
        "user_pin_initialized": t.user_pin_initialized,
    })
}
