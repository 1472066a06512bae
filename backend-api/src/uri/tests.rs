//! Tests of key URI parsing, printing, round trips and error messages.

use std::num::NonZeroUsize;

use super::error::{UriComponent, UriError, UriErrorReason};
use super::file::FileUri;
use super::pkcs11::{LibraryVersion, ObjectType, Pkcs11Uri, TokenAttrs};
use super::redact::redact;
use super::tpm2::{Tpm2Key, Tpm2Uri};
use super::{KeyUri, UriParseOptions};
use secrecy::{ExposeSecret, SecretString};

fn p11(s: &str) -> Pkcs11Uri {
    match s.parse::<KeyUri>() {
        Ok(KeyUri::Pkcs11(p)) => p,
        other => panic!("{s}: {other:?}"),
    }
}

fn err(s: &str) -> UriError {
    match s.parse::<KeyUri>() {
        Err(e) => e,
        Ok(u) => panic!("{s} parsed as {u:?}"),
    }
}

/// Display -> parse gives the same value; returns the displayed form.
fn roundtrip(u: &KeyUri) -> String {
    let shown = u.to_string();
    let opts = UriParseOptions::new().allow_pin_value(true);
    let back = KeyUri::parse_with(&shown, &opts).unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert_eq!(&back, u, "{shown}");
    shown
}

/// Parses, checks the value round-trips, and that canonical input prints back unchanged.
fn canonical(s: &str) -> Pkcs11Uri {
    let u = KeyUri::from(p11(s));
    assert_eq!(roundtrip(&u), s);
    let KeyUri::Pkcs11(p) = u else { unreachable!() };
    p
}

// RFC 7512 section 6, in order.

#[test]
fn rfc7512_empty() {
    let u = canonical("pkcs11:");
    assert_eq!(u, Pkcs11Uri::new());
    assert!(u.matches_object(None, None, ObjectType::Cert));
}

#[test]
fn rfc7512_public_key() {
    let u = canonical("pkcs11:object=my-pubkey;type=public");
    assert_eq!(u.object(), Some("my-pubkey"));
    assert_eq!(u.object_type(), Some(ObjectType::Public));
}

#[test]
fn rfc7512_pin_source() {
    let u = canonical("pkcs11:object=my-key;type=private?pin-source=file:/etc/token");
    assert_eq!(u.object(), Some("my-key"));
    assert_eq!(u.object_type(), Some(ObjectType::Private));
    assert_eq!(u.pin_source(), Some("file:/etc/token"));
}

#[test]
fn rfc7512_full_token_and_id() {
    let s = "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;\
             manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;\
             id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin";
    let u = p11(s);
    assert_eq!(u.token(), Some("The Software PKCS#11 Softtoken"));
    assert_eq!(u.manufacturer(), Some("Snake Oil, Inc."));
    assert_eq!(u.model(), Some("1.0"));
    assert_eq!(u.object(), Some("my-certificate"));
    assert_eq!(u.object_type(), Some(ObjectType::Cert));
    assert_eq!(
        u.id(),
        Some(&[0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91][..])
    );
    assert_eq!(u.serial(), Some(""));
    assert_eq!(u.pin_source(), Some("file:/etc/token_pin"));
    // Canonical order puts serial after manufacturer.
    assert_eq!(
        roundtrip(&u.into()),
        "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;\
         manufacturer=Snake%20Oil,%20Inc.;serial=;model=1.0;object=my-certificate;type=cert;\
         id=%69%95%3E%5C%F4%BD%EC%91?pin-source=file:/etc/token_pin"
    );

    // The variant from the brief, with a 20-byte id and no query.
    let u = p11("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;\
         manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;\
         id=%69%95%3E%5C%F4%BE%B5%5F%2C%A1%C8%49%B6%BB%67%D6%B6%4C%4F%E7;serial=");
    assert_eq!(
        u.id().map(hex::encode).as_deref(),
        Some("69953e5cf4beb55f2ca1c849b6bb67d6b64c4fe7")
    );
    roundtrip(&u.into());
}

#[test]
fn rfc7512_module_name_and_path() {
    let u = canonical("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11");
    assert_eq!(u.module_name(), Some("mypkcs11"));
    let u = canonical("pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1");
    assert_eq!(u.module_path(), Some("/mnt/libmypkcs11.so.1"));
}

#[test]
fn rfc7512_pin_value_refused_by_default_accepted_on_opt_in() {
    let s = "pkcs11:token=Software%20PKCS%2311%20softtoken;\
             manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin";
    let e = err(s);
    assert_eq!(e.reason, UriErrorReason::PinValueRefused);
    assert_eq!(e.position, s.find("pin-value").unwrap());
    let msg = e.to_string();
    assert!(!msg.contains("the-pin"), "{msg}");
    assert!(msg.contains("Inc.?[...]"), "{msg}");
    assert!(msg.contains("HARDKEY_PIN"), "{msg}");
    assert!(msg.contains("allow_pin_value"), "{msg}");
    assert!(format!("{e:?}").find("the-pin").is_none());
    assert!(s.parse::<Pkcs11Uri>().is_err());

    let opts = UriParseOptions::new().allow_pin_value(true);
    let KeyUri::Pkcs11(u) = KeyUri::parse_with(s, &opts).unwrap() else {
        panic!()
    };
    assert_eq!(u.token(), Some("Software PKCS#11 softtoken"));
    assert_eq!(u.manufacturer(), Some("Snake Oil, Inc."));
    assert_eq!(u.pin_value().map(|p| p.expose_secret()), Some("the-pin"));
    // Display, Debug never show the PIN.
    assert_eq!(
        u.to_string(),
        "pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc."
    );
    let dbg = format!("{u:?}");
    assert!(
        !dbg.contains("the-pin") && dbg.contains("[redacted]"),
        "{dbg}"
    );
    // to_string_with_pin does, and round-trips.
    let with_pin = u.to_string_with_pin();
    assert_eq!(with_pin.expose_secret(), s);
    assert_eq!(
        Pkcs11Uri::parse_with(with_pin.expose_secret(), &opts).unwrap(),
        u
    );
    // The PIN is part of equality.
    let other = u.clone().with_pin_value(SecretString::from("other"));
    assert_ne!(other, u);
}

#[test]
fn rfc7512_slot_and_library() {
    let u = canonical("pkcs11:slot-description=Sun%20Metaslot");
    assert_eq!(u.slot_description(), Some("Sun Metaslot"));
    let u = canonical(
        "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;\
         library-description=Soft%20Token%20Library;library-version=1.23",
    );
    assert_eq!(u.library_manufacturer(), Some("Snake Oil, Inc."));
    assert_eq!(u.library_description(), Some("Soft Token Library"));
    assert_eq!(u.library_version(), Some(LibraryVersion::new(1, 23)));
    assert!(u.matches_library(
        "Snake Oil, Inc.   ",
        "Soft Token Library",
        LibraryVersion::new(1, 23)
    ));
    assert!(!u.matches_library(
        "Snake Oil, Inc.",
        "Soft Token Library",
        LibraryVersion::new(1, 2)
    ));
}

#[test]
fn rfc7512_token_with_percent_and_mixed_case_id() {
    let s = "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;\
             id=%01%02%03%Ba%dd%Ca%fe%04%05%06";
    let u = p11(s);
    assert_eq!(u.token(), Some("My token% created by Joe"));
    assert_eq!(u.library_version(), Some(LibraryVersion::new(3, 0)));
    assert_eq!(
        u.id(),
        Some(&[1, 2, 3, 0xba, 0xdd, 0xca, 0xfe, 4, 5, 6][..])
    );
    // Upper-case hex on output.
    assert_eq!(
        roundtrip(&u.into()),
        "pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;\
         id=%01%02%03%BA%DD%CA%FE%04%05%06"
    );
}

#[test]
fn rfc7512_escaped_separator_and_non_ascii() {
    let u = canonical(
        "pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
    );
    assert_eq!(u.token(), Some("A name with a substring %;"));
    let u = canonical(
        "pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;\
         object=my-certificate;type=cert",
    );
    assert_eq!(u.token(), Some("Name with a small A with acute: \u{e1}"));
    let u = canonical("pkcs11:token=my-token;object=my-certificate;type=cert;id=%E2%82%AC");
    assert_eq!(u.id(), Some("\u{20ac}".as_bytes()));
}

#[test]
fn rfc7512_unknown_attributes_kept_and_match_nothing() {
    let s = "pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a\
             ?pin-source=file:/etc/token_pin&vendor-bbb=value-b";
    let u = canonical(s);
    assert!(u.has_unrecognized());
    assert_eq!(
        u.unrecognized_path_attributes(),
        &[("vendor-aaa".to_owned(), "value-a".to_owned())]
    );
    assert_eq!(
        u.unrecognized_query_attributes(),
        &[("vendor-bbb".to_owned(), "value-b".to_owned())]
    );
    assert_eq!(u.pin_source(), Some("file:/etc/token_pin"));
    let token = TokenAttrs {
        label: "my-token",
        ..TokenAttrs::default()
    };
    assert!(!u.matches_token(&token));
    assert!(!u.matches_slot(0, "", ""));
    assert!(!u.matches_object(Some("my-certificate"), None, ObjectType::Cert));
    // Without the unknown attributes the same URI matches.
    let known = p11("pkcs11:token=my-token;object=my-certificate;type=cert");
    assert!(known.matches_token(&token));
    assert!(known.matches_object(Some("my-certificate"), None, ObjectType::Cert));
}

#[test]
fn vendor_attributes_verbatim_and_not_unrecognized() {
    let s = "pkcs11:object=k;x-Vendor_a=A%20b?x-q=1&x-q=2&module-name=m";
    let u = p11(s);
    assert!(!u.has_unrecognized());
    assert_eq!(
        u.vendor_path_attributes(),
        &[("x-Vendor_a".to_owned(), "A%20b".to_owned())]
    );
    assert_eq!(u.vendor_query_attributes().len(), 2);
    assert_eq!(
        roundtrip(&u.into()),
        "pkcs11:object=k;x-Vendor_a=A%20b?module-name=m&x-q=1&x-q=2"
    );
    // Vendor path attributes may not repeat.
    let e = err("pkcs11:x-a=1;X-A=2");
    assert!(matches!(e.reason, UriErrorReason::DuplicateAttribute { ref name } if name == "x-a"));
}

#[test]
fn scheme_and_names_case_insensitive() {
    let u = p11("PKCS11:TOKEN=web;Type=PRIVATE");
    assert_eq!(u.token(), Some("web"));
    assert_eq!(u.object_type(), Some(ObjectType::Private));
    assert_eq!(u.to_string(), "pkcs11:token=web;type=private");
    assert!(matches!(
        "TPM2:handle=0x81000001".parse(),
        Ok(KeyUri::Tpm2(_))
    ));
    assert!(matches!("File:k.pem".parse(), Ok(KeyUri::File(_))));
}

#[test]
fn max_sessions() {
    let u = canonical("pkcs11:token=web?module-name=softhsm2&max-sessions=8");
    assert_eq!(u.max_sessions(), NonZeroUsize::new(8));
    for bad in ["0", "-1", "+1", "", "1x", "99999999999999999999999"] {
        let e = err(&format!("pkcs11:?max-sessions={bad}"));
        assert!(
            matches!(e.reason, UriErrorReason::InvalidValue { ref attr, .. } if attr == "max-sessions"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn builder() {
    let u = Pkcs11Uri::new()
        .with_token("web")
        .with_object("tls key")
        .with_object_type(ObjectType::Private)
        .with_id([0xab, 0x01])
        .with_slot_id(3)
        .with_module_path("/usr/lib/softhsm/libsofthsm2.so")
        .with_pin_source("file:/run/pin")
        .with_max_sessions(NonZeroUsize::MIN);
    assert_eq!(
        roundtrip(&u.clone().into()),
        "pkcs11:token=web;slot-id=3;object=tls%20key;type=private;id=%AB%01\
         ?pin-source=file:/run/pin&module-path=/usr/lib/softhsm/libsofthsm2.so&max-sessions=1"
    );
    // pin-value and pin-source exclude each other.
    let v = u.with_pin_value(SecretString::from("1234"));
    assert_eq!(v.pin_source(), None);
    assert!(!v.to_string().contains("1234"));
    let v = v.with_pin_source("file:/x");
    assert!(v.pin_value().is_none());
}

// Invalid input.

fn assert_err(s: &str, position: usize, check: impl Fn(&UriErrorReason) -> bool) -> UriError {
    let e = err(s);
    assert!(check(&e.reason), "{s}: unexpected reason {:?}", e.reason);
    assert_eq!(e.position, position, "{s}: {e}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("at byte {position}:")), "{msg}");
    assert!(msg.contains(&format!("(expected {})", e.expected)), "{msg}");
    e
}

#[test]
fn error_message_format() {
    let e = err("pkcs11:tok%en=web");
    assert_eq!(
        e.to_string(),
        "invalid key URI 'pkcs11:tok[...]' at byte 10: bad percent-encoding (not shown) \
         (expected two hex digits after '%')"
    );
    assert_eq!(
        e.reason,
        UriErrorReason::BadPercentEncoding {
            fragment: "%en".into()
        }
    );
    // Errors convert into the crate's error.
    let e: crate::Error = e.into();
    assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
}

#[test]
fn bad_percent_encoding() {
    use UriErrorReason::BadPercentEncoding as B;
    assert_err(
        "pkcs11:token=a%2",
        14,
        |r| matches!(r, B { fragment } if fragment == "%2"),
    );
    assert_err(
        "pkcs11:token=a%",
        14,
        |r| matches!(r, B { fragment } if fragment == "%"),
    );
    assert_err("pkcs11:token=%zz", 13, |r| matches!(r, B { .. }));
    // A multi-byte character right after '%' must not panic.
    assert_err(
        "pkcs11:token=%\u{e9}\u{e9}",
        13,
        |r| matches!(r, B { fragment } if fragment == "%\u{e9}\u{e9}"),
    );
    assert_err("file:/tmp/100%.pem", 13, |r| matches!(r, B { .. }));
    assert_err("tpm2:file=/a%g0", 12, |r| matches!(r, B { .. }));
}

#[test]
fn unexpected_characters() {
    let e = assert_err(
        "pkcs11:token=my token",
        15,
        |r| matches!(r, UriErrorReason::UnexpectedCharacter { ch: ' ', attr } if attr == "token"),
    );
    assert!(e.to_string().contains("write it as %20"), "{e}");
    assert_err("pkcs11:object=a/b", 15, |r| {
        matches!(r, UriErrorReason::UnexpectedCharacter { ch: '/', .. })
    });
    assert_err("pkcs11:object=a#frag", 15, |r| {
        matches!(r, UriErrorReason::UnexpectedCharacter { ch: '#', .. })
    });
    assert_err("pkcs11:?module-name=a;b", 21, |r| {
        matches!(r, UriErrorReason::UnexpectedCharacter { ch: ';', .. })
    });
    let e = assert_err("pkcs11:token=caf\u{e9}", 16, |r| {
        matches!(r, UriErrorReason::UnexpectedCharacter { ch: '\u{e9}', .. })
    });
    assert!(e.to_string().contains("%C3%A9"), "{e}");
    assert_err("file:/a?b", 7, |r| {
        matches!(r, UriErrorReason::UnexpectedCharacter { ch: '?', .. })
    });
    // Control characters are escaped in the message.
    let e = err("pkcs11:token=a\nb");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn attribute_syntax_errors() {
    assert_err("pkcs11:token=a;;object=b", 15, |r| {
        *r == UriErrorReason::EmptyAttributeName
    });
    assert_err("pkcs11:token=a;", 15, |r| {
        *r == UriErrorReason::EmptyAttributeName
    });
    assert_err("pkcs11:=a", 7, |r| *r == UriErrorReason::EmptyAttributeName);
    assert_err(
        "pkcs11:token",
        12,
        |r| matches!(r, UriErrorReason::MissingEquals { name } if name == "token"),
    );
    assert_err(
        "pkcs11:to ken=a",
        9,
        |r| matches!(r, UriErrorReason::BadAttributeName { name } if name == "to ken"),
    );
    assert_err("pkcs11:tok%41n=a", 10, |r| {
        matches!(r, UriErrorReason::BadAttributeName { .. })
    });
}

#[test]
fn duplicate_and_misplaced_attributes() {
    assert_err(
        "pkcs11:token=a;object=b;token=c",
        24,
        |r| matches!(r, UriErrorReason::DuplicateAttribute { name } if name == "token"),
    );
    assert_err("pkcs11:token=a;TOKEN=a", 15, |r| {
        matches!(r, UriErrorReason::DuplicateAttribute { .. })
    });
    assert_err(
        "pkcs11:?module-name=a&module-name=b",
        22,
        |r| matches!(r, UriErrorReason::DuplicateAttribute { name } if name == "module-name"),
    );
    assert_err(
        "pkcs11:pin-source=file:/x",
        7,
        |r| matches!(r, UriErrorReason::MisplacedAttribute { name, belongs_in: UriComponent::Query } if name == "pin-source"),
    );
    assert_err("pkcs11:?token=a", 8, |r| {
        matches!(
            r,
            UriErrorReason::MisplacedAttribute {
                belongs_in: UriComponent::Path,
                ..
            }
        )
    });
    // A misplaced pin-value is not echoed either.
    let e = err("pkcs11:pin-value=secret1");
    assert!(!e.to_string().contains("secret1"), "{e}");
}

#[test]
fn bad_typed_values() {
    let is_invalid = |attr: &'static str| move |r: &UriErrorReason| matches!(r, UriErrorReason::InvalidValue { attr: a, .. } if a == attr);
    let e = assert_err("pkcs11:type=key", 12, is_invalid("type"));
    assert!(e.to_string().contains("secret-key"), "{e}");
    assert_err("pkcs11:type=", 12, is_invalid("type"));
    assert_err("pkcs11:slot-id=abc", 15, is_invalid("slot-id"));
    assert_err("pkcs11:slot-id=", 15, is_invalid("slot-id"));
    assert_err("pkcs11:slot-id=-1", 15, is_invalid("slot-id"));
    assert_err(
        "pkcs11:slot-id=18446744073709551616",
        15,
        is_invalid("slot-id"),
    );
    assert_eq!(
        p11("pkcs11:slot-id=18446744073709551615").slot_id(),
        Some(u64::MAX)
    );
    for v in ["", "1.", ".1", "1.2.3", "256", "1.256", "v1", "1,2", "+1"] {
        let s = format!("pkcs11:library-version={v}");
        assert_err(&s, 23, is_invalid("library-version"));
    }
}

#[test]
fn not_utf8() {
    assert_err(
        "pkcs11:token=%FF",
        13,
        |r| matches!(r, UriErrorReason::NotUtf8 { attr } if attr == "token"),
    );
    assert_err("pkcs11:?module-path=%C3", 20, |r| {
        matches!(r, UriErrorReason::NotUtf8 { .. })
    });
    // id holds bytes.
    assert_eq!(p11("pkcs11:id=%FF").id(), Some(&[0xff][..]));
}

#[test]
fn pin_value_errors_do_not_leak() {
    let opts = UriParseOptions::new().allow_pin_value(true);
    for s in [
        "pkcs11:?pin-value=hun%zzter2",
        "pkcs11:?pin-value=hun ter2",
        "pkcs11:?pin-value=hunter2&bogus name=1",
        "pkcs11:?PIN-VALUE=hunter2&type=x",
        "pkcs11:?pin-value=%FFhunter2",
    ] {
        let e = Pkcs11Uri::parse_with(s, &opts).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("hun"), "{shown}");
        assert!(!shown.contains("ter2"), "{shown}");
    }
    let e = Pkcs11Uri::parse_with("pkcs11:?pin-value=a%zz", &opts).unwrap_err();
    assert_eq!(
        e.reason,
        UriErrorReason::MalformedSecret { attr: "pin-value" }
    );
    assert_err("pkcs11:?pin-source=file:/p&pin-value=1", 27, |r| {
        *r == UriErrorReason::PinValueRefused
    });
    let e = Pkcs11Uri::parse_with("pkcs11:?pin-source=file:/p&pin-value=1", &opts).unwrap_err();
    assert!(matches!(
        e.reason,
        UriErrorReason::ConflictingAttributes { .. }
    ));
}

/// Found by an attacker's review: a piece without '=' may be a PIN typed in the wrong
/// place; only a known attribute name is quoted.
#[test]
fn unknown_pieces_without_equals_are_not_quoted() {
    for s in [
        "pkcs11:token=L;object=web?pin-value:SECRET99",
        "pkcs11:token=L;pin-value:SECRET99",
        "pkcs11:token=L;object=web?pin-valueSECRET99",
        "pkcs11:token=L;object=web?pin-value%3DSECRET99",
        "pkcs11:token=L;SECRET99",
    ] {
        let e = s.parse::<KeyUri>().unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("SECRET99"), "{s}: {shown}");
        assert!(shown.contains("no '='"), "{s}: {shown}");
    }
    let e = "pkcs11:token".parse::<KeyUri>().unwrap_err();
    assert!(e.to_string().contains("\"token\" has no '='"), "{e}");
}

/// Found by the `uri` fuzz target: a reason quoted input text (a `file:` host, an invalid
/// value) that runs past a `pin-value=` although the error's position is before it.
#[test]
fn reasons_quoting_text_past_a_pin_value_are_redacted() {
    for s in [
        "file://pkcs11:token=web?pin-value=S3CRET/key.pem",
        "pkcs11:type=xpin-value=S3CRET",
        "pkcs11:slot-id=pin-value=S3CRET",
        "tpm2:handle=0xpin-value=S3CRET",
    ] {
        let opts = UriParseOptions::new().allow_pin_value(true);
        for e in [
            s.parse::<KeyUri>().unwrap_err(),
            KeyUri::parse_with(s, &opts).unwrap_err(),
        ] {
            assert_eq!(e.reason, UriErrorReason::Redacted, "{s}");
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("S3CRET"), "{shown}");
        }
    }
}

#[test]
fn scheme_errors() {
    let e = assert_err("key.pem", 0, |r| *r == UriErrorReason::MissingScheme);
    assert!(e.to_string().contains("file:key.pem"), "{e}");
    assert_err("", 0, |r| *r == UriErrorReason::MissingScheme);
    assert_err("/etc/key:1.pem", 0, |r| *r == UriErrorReason::MissingScheme);
    let e = assert_err(
        "http://example.com/key",
        0,
        |r| matches!(r, UriErrorReason::UnknownScheme { scheme } if scheme == "http"),
    );
    let msg = e.to_string();
    assert!(
        msg.contains("\"http\"")
            && msg.contains("pkcs11:")
            && msg.contains("tpm2:")
            && msg.contains("file:"),
        "{msg}"
    );
    let e = "tpm2:handle=0x81000000".parse::<Pkcs11Uri>().unwrap_err();
    assert!(matches!(
        e.reason,
        UriErrorReason::WrongScheme {
            wanted: "pkcs11",
            ..
        }
    ));
}

// tpm2:

#[test]
fn tpm2_handle() {
    for (s, h) in [
        ("tpm2:handle=0x81000010", 0x8100_0010),
        ("tpm2:handle=0X81ffffff", 0x81ff_ffff),
        ("tpm2:handle=2164260864", 0x8100_0000),
    ] {
        let u: KeyUri = s.parse().unwrap();
        assert_eq!(u, KeyUri::Tpm2(Tpm2Uri::new(Tpm2Key::Handle(h))));
        roundtrip(&u);
    }
    let u: KeyUri = "tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port=2321"
        .parse()
        .unwrap();
    assert_eq!(
        u,
        KeyUri::Tpm2(
            Tpm2Uri::new(Tpm2Key::Handle(0x8100_0010)).with_tcti("swtpm:host=127.0.0.1,port=2321")
        )
    );
    assert_eq!(
        roundtrip(&u),
        "tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port=2321"
    );
    assert_eq!(
        Tpm2Uri::new(Tpm2Key::Handle(0x8100_0001)).to_string(),
        "tpm2:handle=0x81000001"
    );
}

#[test]
fn tpm2_file() {
    let u: Tpm2Uri = "tpm2:file=/etc/hardkey/web%20key.tss2.pem?tcti=device:/dev/tpmrm0"
        .parse()
        .unwrap();
    assert_eq!(u.key, Tpm2Key::File("/etc/hardkey/web key.tss2.pem".into()));
    assert_eq!(u.tcti.as_deref(), Some("device:/dev/tpmrm0"));
    assert_eq!(
        roundtrip(&u.into()),
        "tpm2:file=/etc/hardkey/web%20key.tss2.pem?tcti=device:/dev/tpmrm0"
    );
    // Characters that are separators elsewhere survive.
    let u = Tpm2Uri::new(Tpm2Key::File("/k;?&=%#.pem".into())).with_tcti("a&b;c#d");
    let shown = roundtrip(&u.into());
    assert_eq!(shown, "tpm2:file=/k%3B%3F&=%25%23.pem?tcti=a%26b%3Bc%23d");
}

#[test]
fn tpm2_errors() {
    assert_err("tpm2:handle=0x81000010;file=/k.pem", 23, |r| {
        *r == UriErrorReason::ConflictingAttributes {
            first: "handle",
            second: "file",
        }
    });
    assert_err("tpm2:", 5, |r| *r == UriErrorReason::MissingKey);
    assert_err("tpm2:?tcti=device", 17, |r| {
        *r == UriErrorReason::MissingKey
    });
    let e = assert_err("tpm2:handle=0x80000001", 12, |r| {
        *r == UriErrorReason::HandleOutOfRange {
            handle: 0x8000_0001,
        }
    });
    assert!(e.to_string().contains("0x81000000..=0x81FFFFFF"), "{e}");
    assert_err("tpm2:handle=0x100000000", 12, |r| {
        matches!(r, UriErrorReason::HandleOutOfRange { .. })
    });
    for bad in [
        "",
        "0x",
        "0xg1",
        "-1",
        "81000010h",
        "0x+1",
        "99999999999999999999999",
    ] {
        assert_err(&format!("tpm2:handle={bad}"), 12, |r| {
            matches!(r, UriErrorReason::BadHandle { .. })
        });
    }
    let e = assert_err(
        "tpm2:handle=0x81000010;auth=x",
        23,
        |r| matches!(r, UriErrorReason::UnknownAttribute { name } if name == "auth"),
    );
    assert!(e.to_string().contains("tcti="), "{e}");
    assert_err("tpm2:handle=0x81000010?x-foo=1", 23, |r| {
        matches!(r, UriErrorReason::UnknownAttribute { .. })
    });
    assert_err("tpm2:handle=0x81000010;handle=0x81000011", 23, |r| {
        matches!(r, UriErrorReason::DuplicateAttribute { .. })
    });
    assert_err("tpm2:handle=0x81000010?tcti=a&tcti=b", 30, |r| {
        matches!(r, UriErrorReason::DuplicateAttribute { .. })
    });
    assert_err(
        "tpm2:handle=0x81000010?tcti=",
        28,
        |r| matches!(r, UriErrorReason::InvalidValue { attr, .. } if attr == "tcti"),
    );
    assert_err(
        "tpm2:file=",
        10,
        |r| matches!(r, UriErrorReason::InvalidValue { attr, .. } if attr == "file"),
    );
    assert_err("tpm2:tcti=x", 5, |r| {
        matches!(r, UriErrorReason::MisplacedAttribute { .. })
    });
    assert_err("tpm2:?handle=0x81000000", 6, |r| {
        matches!(r, UriErrorReason::MisplacedAttribute { .. })
    });
}

// file:

#[test]
fn file_forms() {
    for (s, path) in [
        ("file:key.pem", "key.pem"),
        ("file:/abs/path.pem", "/abs/path.pem"),
        ("file:///abs/path.pem", "/abs/path.pem"),
        ("file://localhost/abs/path.pem", "/abs/path.pem"),
        ("file:/a%20b/c%3Fd.pem", "/a b/c?d.pem"),
        ("file:/a b;c.pem", "/a b;c.pem"),
        ("file:/caf\u{e9}.pem", "/caf\u{e9}.pem"),
    ] {
        let u: KeyUri = s.parse().unwrap();
        assert_eq!(u, KeyUri::File(FileUri::new(path)), "{s}");
        roundtrip(&u);
    }
    assert_eq!(
        FileUri::new("/a b;c?d#e%f/caf\u{e9}.pem").to_string(),
        "file:/a%20b%3Bc%3Fd%23e%25f/caf%C3%A9.pem"
    );
    assert_eq!(FileUri::new("rel/key.pem").to_string(), "file:rel/key.pem");
    // A path starting with "//" gets an empty authority so it is not read as a host.
    let u = KeyUri::File(FileUri::new("//srv/key.pem"));
    assert_eq!(roundtrip(&u), "file:////srv/key.pem");
}

#[test]
fn file_errors() {
    assert_err(
        "file://remotehost/x",
        7,
        |r| matches!(r, UriErrorReason::RemoteFileHost { host } if host == "remotehost"),
    );
    assert_err("file:", 5, |r| *r == UriErrorReason::EmptyPath);
    assert_err("file://", 7, |r| *r == UriErrorReason::EmptyPath);
    assert_err("file://localhost", 16, |r| *r == UriErrorReason::EmptyPath);
    assert_err("file:/k.pem#frag", 11, |r| {
        matches!(r, UriErrorReason::UnexpectedCharacter { ch: '#', .. })
    });
}

#[cfg(unix)]
#[test]
fn file_non_utf8_path_round_trips() {
    let u: KeyUri = "file:/tmp/%FF.pem".parse().unwrap();
    let KeyUri::File(f) = &u else { panic!() };
    use std::os::unix::ffi::OsStrExt;
    assert_eq!(f.path.as_os_str().as_bytes(), b"/tmp/\xff.pem");
    assert_eq!(roundtrip(&u), "file:/tmp/%FF.pem");
}

// Matching.

#[test]
fn matching_padded_token_fields() {
    let u = p11("pkcs11:token=web;manufacturer=SoftHSM%20project;serial=1234;model=SoftHSM%20v2");
    let t = TokenAttrs {
        label: "web                             ",
        manufacturer: "SoftHSM project                 ",
        serial: "1234            ",
        model: "SoftHSM v2      ",
    };
    assert!(u.matches_token(&t));
    assert!(!u.matches_token(&TokenAttrs { label: "web2", ..t }));
    assert!(!u.matches_token(&TokenAttrs { label: " web", ..t }));
    assert!(!u.matches_token(&TokenAttrs {
        serial: "12345",
        ..t
    }));
    // No attributes: matches any token.
    assert!(Pkcs11Uri::new().matches_token(&t));
    // The empty serial of RFC 7512's example matches only an empty (all-space) serial.
    let empty_serial = p11("pkcs11:serial=");
    assert!(empty_serial.matches_token(&TokenAttrs {
        serial: "                ",
        ..t
    }));
    assert!(!empty_serial.matches_token(&t));
}

#[test]
fn matching_slot() {
    let u = p11("pkcs11:slot-description=Sun%20Metaslot;slot-id=7");
    assert!(u.matches_slot(7, "Sun Metaslot      ", "any"));
    assert!(!u.matches_slot(8, "Sun Metaslot", "any"));
    assert!(!u.matches_slot(7, "Other", "any"));
    assert!(p11("pkcs11:slot-manufacturer=Snake").matches_slot(1, "", "Snake   "));
}

#[test]
fn matching_objects_by_id_label_type() {
    let u = p11("pkcs11:object=tls;type=private;id=%01%02");
    assert!(u.matches_object(Some("tls"), Some(&[1, 2]), ObjectType::Private));
    assert!(!u.matches_object(Some("tls"), Some(&[1, 2, 3]), ObjectType::Private));
    assert!(!u.matches_object(Some("tls"), Some(&[1]), ObjectType::Private));
    assert!(!u.matches_object(Some("tls"), None, ObjectType::Private));
    assert!(!u.matches_object(Some("tls"), Some(&[1, 2]), ObjectType::Public));
    assert!(!u.matches_object(None, Some(&[1, 2]), ObjectType::Private));
    // Labels are not padded: compared exactly.
    assert!(!u.matches_object(Some("tls "), Some(&[1, 2]), ObjectType::Private));
    let by_id = p11("pkcs11:id=%01%02");
    assert!(by_id.matches_object(None, Some(&[1, 2]), ObjectType::Cert));
    assert!(by_id.matches_object(Some("x"), Some(&[1, 2]), ObjectType::Public));
    // An empty id matches only an empty CKA_ID.
    let empty = p11("pkcs11:id=");
    assert!(empty.matches_object(None, Some(&[]), ObjectType::Cert));
    assert!(!empty.matches_object(None, Some(&[0]), ObjectType::Cert));
}

// Property-style round trip over tricky values.

const TRICKY: [&str; 14] = [
    "",
    " ",
    "a b",
    ";",
    "?",
    "&",
    "=",
    "%",
    "%41",
    "/",
    "a;b?c&d=e%f/g#h",
    "caf\u{e9} \u{20ac} \u{1f511}",
    "[]@!$'()*+,|~",
    "\t\n\u{7f}\"<>\\^`{}",
];

#[test]
fn round_trip_generated_pkcs11() {
    for (i, a) in TRICKY.iter().enumerate() {
        let b = TRICKY[(i + 5) % TRICKY.len()];
        let base = Pkcs11Uri::new()
            .with_token(*a)
            .with_manufacturer(b)
            .with_serial(*a)
            .with_model(b)
            .with_library_manufacturer(*a)
            .with_library_description(b)
            .with_library_version(LibraryVersion::new(u8::try_from(i).unwrap(), 255))
            .with_slot_manufacturer(*a)
            .with_slot_description(b)
            .with_slot_id(u64::MAX - i as u64)
            .with_object(*a)
            .with_object_type(ObjectType::SecretKey)
            .with_id(a.as_bytes())
            .with_module_name(*a)
            .with_module_path(b)
            .with_max_sessions(NonZeroUsize::new(i + 1).unwrap());
        let shown = roundtrip(&base.clone().into());
        assert!(shown.is_ascii(), "{shown}");
        assert!(!shown.contains(' ') && !shown.contains('#'), "{shown}");
        roundtrip(&base.clone().with_pin_source(b).into());

        // Display drops a pin-value; to_string_with_pin keeps it.
        let with_pin = base.clone().with_pin_value(SecretString::from(*a));
        assert_eq!(with_pin.to_string(), shown);
        let text = with_pin.to_string_with_pin();
        let opts = UriParseOptions::new().allow_pin_value(true);
        let back = Pkcs11Uri::parse_with(text.expose_secret(), &opts).unwrap();
        assert_eq!(back, with_pin, "{}", text.expose_secret());

        // Single attributes, each alone.
        for one in [
            Pkcs11Uri::new().with_token(*a),
            Pkcs11Uri::new().with_object(*a),
            Pkcs11Uri::new().with_id(a.as_bytes()),
            Pkcs11Uri::new().with_module_path(*a),
        ] {
            roundtrip(&one.into());
        }
    }
}

#[test]
fn round_trip_generated_tpm2_and_file() {
    for a in TRICKY.iter().filter(|a| !a.is_empty()) {
        let path = format!("/k/{a}.pem");
        roundtrip(
            &Tpm2Uri::new(Tpm2Key::File(path.clone().into()))
                .with_tcti(*a)
                .into(),
        );
        roundtrip(&FileUri::new(&path).into());
        roundtrip(&FileUri::new(*a).into());
    }
}

#[test]
fn parser_never_panics_on_mangled_input() {
    let seeds = [
        "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;id=%01%AB?pin-source=file:/p",
        "tpm2:handle=0x81000010?tcti=swtpm:host=127.0.0.1,port=2321",
        "file:///caf\u{e9}/k%20y.pem",
        "pkcs11:x-a=%C3%A9;type=cert?pin-value=\u{20ac}&max-sessions=2",
    ];
    let opts = UriParseOptions::new().allow_pin_value(true);
    for seed in seeds {
        let chars: Vec<char> = seed.chars().collect();
        // Every prefix, and every one-character deletion or replacement.
        for i in 0..=chars.len() {
            let prefix: String = chars.iter().take(i).collect();
            let _ = KeyUri::parse_with(&prefix, &opts);
            for repl in ['%', '\u{e9}', ';', '?', '&', '=', ':', '/', '\0'] {
                let mut m = chars.clone();
                if i < m.len() {
                    m[i] = repl;
                }
                let s: String = m.iter().collect();
                if let Ok(u) = KeyUri::parse_with(&s, &opts) {
                    // Whatever parses must round-trip (the PIN via to_string_with_pin).
                    let text = match &u {
                        KeyUri::Pkcs11(p) => p.to_string_with_pin().expose_secret().to_owned(),
                        other => other.to_string(),
                    };
                    assert_eq!(
                        KeyUri::parse_with(&text, &opts).as_ref(),
                        Ok(&u),
                        "{s} -> {text}"
                    );
                } else if let Err(e) = KeyUri::parse_with(&s, &opts) {
                    assert!(e.position <= s.len(), "{s}: {e}");
                }
            }
        }
    }
}

#[test]
fn redaction() {
    assert_eq!(
        redact("pkcs11:?pin-value=1234"),
        "pkcs11:?pin-value=[redacted]"
    );
    assert_eq!(
        redact("pkcs11:?PIN-Value=12&module-name=x&pin-value=\u{e9}"),
        "pkcs11:?PIN-Value=[redacted]"
    );
    // A PIN holding separators leaks no fragment, in the input or the reason.
    for uri in [
        "pkcs11:?pin-value=ab;cd",
        "pkcs11:?pin-value=ab&cd",
        "pkcs11:?pin-value=ab#cd",
    ] {
        let opts = UriParseOptions::new().allow_pin_value(true);
        if let Err(e) = KeyUri::parse_with(uri, &opts) {
            let msg = e.to_string();
            assert!(!msg.contains("Q7xZ") && !msg.contains("K9wP"), "{msg}");
        }
        let msg = uri.parse::<KeyUri>().unwrap_err().to_string();
        assert!(!msg.contains("Q7xZ") && !msg.contains("K9wP"), "{msg}");
    }
    assert_eq!(redact("pkcs11:token=a"), "pkcs11:token=a");
    // In the path too, and fragments go.
    for (uri, shown) in [
        (
            "pkcs11:token=a;pin=S3CRET;object=k",
            "pkcs11:token=a;pin=[redacted]",
        ),
        (
            "pkcs11:token=a;object=k;pin-source=S3CRET",
            "pkcs11:token=a;object=k;pin-source=[redacted]",
        ),
        (
            "pkcs11:token=a;object=k#S3CRET",
            "pkcs11:token=a;object=k#[redacted]",
        ),
        (
            "tpm2:handle=0x81000001;auth=S3CRET",
            "tpm2:handle=0x81000001;auth=[redacted]",
        ),
        (
            "pkcs11:token=a?tcti=x&pin-source=env:S3CRET",
            "pkcs11:token=a?tcti=x&pin-source=[redacted]",
        ),
    ] {
        assert_eq!(redact(uri), shown);
    }
    for bad in [
        "pkcs11:token=a;slot-id=S3CRET",
        "pkcs11:token=a?max-sessions=S3CRET",
        "tpm2:handle=S3CRET",
        "pkcs11:token=a;id=%ZS3CRET",
    ] {
        let msg = bad.parse::<KeyUri>().unwrap_err().to_string();
        assert!(!msg.contains("S3CRET"), "{msg}");
    }
    // Only public query values stay; a mistyped or unknown attribute may carry a PIN.
    assert_eq!(
        redact("pkcs11:token=a?module-path=/usr/lib/x.so&max-sessions=4"),
        "pkcs11:token=a?module-path=/usr/lib/x.so&max-sessions=4"
    );
    for (uri, shown) in [
        (
            "pkcs11:token=a?pin-value =1234",
            "pkcs11:token=a?pin-value =[redacted]",
        ),
        (
            "pkcs11:token=a?pin-valu=1234&x=1",
            "pkcs11:token=a?pin-valu=[redacted]",
        ),
        (
            "pkcs11:token=a?pin-source=1234",
            "pkcs11:token=a?pin-source=[redacted]",
        ),
        ("pkcs11:token=a?1234", "pkcs11:token=a?[redacted]"),
        (
            "pkcs11:token=a?module-path=/m.so&pin-valeu=12&34",
            "pkcs11:token=a?module-path=/m.so&pin-valeu=[redacted]",
        ),
    ] {
        assert_eq!(redact(uri), shown);
        assert!(!redact(uri).contains("12"), "{uri}");
    }
}
