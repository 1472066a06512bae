//! What a certificate names: the subject as an RFC 4514 string and the subject alternative
//! names as `type:value` entries, parsed strictly with errors that quote the offending part.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use der::asn1::{Any, Ia5String, ObjectIdentifier};
use der::{Decode, Tag};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use hardkey_api::{Error, InvalidInput, Result};

const SUBJECT_SYNTAX: &str = "an RFC 4514 name such as CN=web.example,O=Example,C=DE: \
    comma-separated TYPE=value pairs, most significant last; escape , + \" \\ < > ; = in values \
    with a backslash";

const ATTRIBUTE_TYPES: &str = "CN, O, OU, C, ST, L, STREET, DC, UID, serialNumber, \
    emailAddress, title, GN, SN, postalCode, organizationIdentifier, or a dotted OID such as \
    2.5.4.3";

const SAN_SYNTAX: &str = "comma-separated TYPE:value entries such as \
    dns:web.example,ip:10.0.0.1,ip:::1,email:admin@web.example,uri:https://web.example/";

/// How an attribute's value is encoded (RFC 5280 appendix A).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueKind {
    /// `UTF8String`, for every DirectoryString attribute.
    Utf8,
    /// `PrintableString`: countryName (two letters) and serialNumber.
    Printable,
    /// `IA5String`: domainComponent and emailAddress.
    Ia5,
}

/// The attribute types a subject may name, by their RFC 4514 / OpenSSL short and long names.
const ATTRIBUTES: &[(&[&str], &str, ValueKind)] = &[
    (&["CN", "commonName"], "2.5.4.3", ValueKind::Utf8),
    (&["SN", "surname"], "2.5.4.4", ValueKind::Utf8),
    (&["serialNumber"], "2.5.4.5", ValueKind::Printable),
    (&["C", "countryName"], "2.5.4.6", ValueKind::Printable),
    (&["L", "localityName"], "2.5.4.7", ValueKind::Utf8),
    (&["ST", "stateOrProvinceName"], "2.5.4.8", ValueKind::Utf8),
    (&["STREET", "streetAddress"], "2.5.4.9", ValueKind::Utf8),
    (&["O", "organizationName"], "2.5.4.10", ValueKind::Utf8),
    (
        &["OU", "organizationalUnitName"],
        "2.5.4.11",
        ValueKind::Utf8,
    ),
    (&["title"], "2.5.4.12", ValueKind::Utf8),
    (&["postalCode"], "2.5.4.17", ValueKind::Utf8),
    (&["GN", "givenName"], "2.5.4.42", ValueKind::Utf8),
    (&["organizationIdentifier"], "2.5.4.97", ValueKind::Utf8),
    (
        &["UID", "userId"],
        "0.9.2342.19200300.100.1.1",
        ValueKind::Utf8,
    ),
    (
        &["DC", "domainComponent"],
        "0.9.2342.19200300.100.1.25",
        ValueKind::Ia5,
    ),
    (&["emailAddress"], "1.2.840.113549.1.9.1", ValueKind::Ia5),
];

/// A certificate subject (an X.501 `Name`), parsed from an RFC 4514 string such as
/// `CN=web.example,O=Example,C=DE`.
///
/// As RFC 4514 prescribes, the string lists the most significant RDN *last*: the example is
/// encoded as `C=DE, O=Example, CN=web.example`, the order OpenSSL prints. `+` joins attributes
/// of one multi-valued RDN. Attribute types are the usual short or long names, matched without
/// regard to case (`CN`, `commonName`, `O`, `OU`, `C`, `ST`, `L`, `DC`, `emailAddress`...), or
/// a dotted OID; a value may be `#` followed by the hex DER of the value. Spaces around
/// separators are ignored. `C` must be two letters, and values are encoded as RFC 5280 asks
/// (`PrintableString` for `C` and `serialNumber`, `IA5String` for `DC` and `emailAddress`,
/// `UTF8String` otherwise).
///
/// ```
/// use hardkey_x509::Subject;
///
/// let subject: Subject = "CN=web.example, O=Example\\, Inc.,C=DE".parse()?;
/// assert_eq!(subject.to_string(), "CN=web.example,O=Example\\, Inc.,C=DE");
/// assert!("CN web.example".parse::<Subject>().is_err());
/// # Ok::<(), hardkey_api::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject(Name);

impl Subject {
    /// A subject from an already built X.501 name (it must not be empty).
    pub fn from_name(name: Name) -> Result<Self> {
        if name.is_empty() {
            return Err(empty_subject(""));
        }
        Ok(Self(name))
    }

    /// The X.501 name.
    pub fn as_name(&self) -> &Name {
        &self.0
    }

    /// The X.501 name, by value.
    pub fn into_name(self) -> Name {
        self.0
    }
}

fn empty_subject(given: &str) -> Error {
    InvalidInput::Value {
        what: "subject",
        given: given.to_owned(),
        expected: SUBJECT_SYNTAX,
    }
    .into()
}

impl FromStr for Subject {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.trim().is_empty() {
            return Err(empty_subject(s));
        }
        let mut rdns = Vec::new();
        for rdn in split_unescaped(s, b',') {
            let atvs = split_unescaped(rdn, b'+')
                .map(parse_attribute)
                .collect::<Result<Vec<_>>>()?;
            let rdn = RelativeDistinguishedName::try_from(atvs).map_err(|_| {
                Error::from(InvalidInput::Value {
                    what: "subject RDN",
                    given: rdn.trim().to_owned(),
                    expected: "each attribute type at most once among attributes joined by '+'",
                })
            })?;
            rdns.push(rdn);
        }
        // RFC 4514 section 2.1: the string starts with the last RDN of the sequence.
        rdns.reverse();
        Ok(Self(RdnSequence(rdns)))
    }
}

impl fmt::Display for Subject {
    /// The RFC 4514 form, most significant RDN last (x509-cert's rendering).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Splits at every `sep` not escaped by a backslash.
fn split_unescaped(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut cuts = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b if b == sep => cuts.push(i),
            _ => {}
        }
        i += 1;
    }
    let mut start = 0;
    cuts.into_iter().chain([s.len()]).map(move |end| {
        // Separators are ASCII, so both ends are character boundaries.
        let part = s.get(start..end).unwrap_or_default();
        start = end + 1;
        part
    })
}

/// One `TYPE=value` of an RDN.
fn parse_attribute(atv: &str) -> Result<AttributeTypeAndValue> {
    let bad = |expected| {
        Error::from(InvalidInput::Value {
            what: "subject attribute",
            given: atv.trim().to_owned(),
            expected,
        })
    };
    let (ty, raw) = atv
        .split_once('=')
        .ok_or_else(|| bad("TYPE=value, e.g. CN=web.example"))?;
    let ty = ty.trim();
    let (oid, kind) = attribute_type(ty)?;
    let raw = raw.trim_start();
    if let Some(hex_der) = raw.strip_prefix('#') {
        let der = hex::decode(hex_der.trim_end())
            .map_err(|_| bad("#HEX with the DER encoding of the value, in hex digits"))?;
        let value = Any::from_der(&der)
            .map_err(|_| bad("#HEX with the DER encoding of the value (not valid DER)"))?;
        return Ok(AttributeTypeAndValue { oid, value });
    }
    let value = unescape(raw).ok_or_else(|| {
        bad(
            "a UTF-8 value in which \" ; < > \\ are escaped with a backslash, and each \
             backslash escapes one such character, a space, #, =, or two hex digits",
        )
    })?;
    if value.is_empty() {
        return Err(bad("a non-empty value after '='"));
    }
    let tag = match kind {
        ValueKind::Utf8 => Tag::Utf8String,
        ValueKind::Printable => {
            if oid == COUNTRY
                && !(value.len() == 2 && value.bytes().all(|b| b.is_ascii_alphabetic()))
            {
                return Err(bad("a two-letter ISO 3166 country code for C, e.g. C=DE"));
            }
            if !value.bytes().all(is_printable) {
                return Err(bad(
                    "only letters, digits, spaces and ' ( ) + , - . / : = ? in this attribute \
                     (a PrintableString)",
                ));
            }
            Tag::PrintableString
        }
        ValueKind::Ia5 => {
            if !value.is_ascii() {
                return Err(bad(
                    "only ASCII characters in this attribute (an IA5String)",
                ));
            }
            Tag::Ia5String
        }
    };
    let value = Any::new(tag, value.as_bytes()).map_err(|e| {
        Error::from(InvalidInput::Encoding {
            what: "subject attribute",
            source: Box::new(e),
        })
    })?;
    Ok(AttributeTypeAndValue { oid, value })
}

const COUNTRY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.6");

fn attribute_type(ty: &str) -> Result<(ObjectIdentifier, ValueKind)> {
    let unknown = || {
        Error::from(InvalidInput::UnknownName {
            what: "subject attribute type",
            given: ty.to_owned(),
            expected: ATTRIBUTE_TYPES,
        })
    };
    if ty.starts_with(|c: char| c.is_ascii_digit()) {
        // Checked here first: const-oid's parser overflows (a panic in debug builds, a wrong
        // OID in release) on an arc past u32, and accepts an empty arc ("1.2..3") as 0.
        let arcs_fit = ty.split('.').all(|arc| {
            !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()) && arc.parse::<u32>().is_ok()
        });
        if !arcs_fit || ty.split('.').count() < 2 {
            return Err(unknown());
        }
        let oid = ObjectIdentifier::new(ty).map_err(|_| unknown())?;
        let kind = ATTRIBUTES
            .iter()
            .find(|(_, dotted, _)| *dotted == oid.to_string())
            .map_or(ValueKind::Utf8, |(_, _, kind)| *kind);
        return Ok((oid, kind));
    }
    let (_, dotted, kind) = ATTRIBUTES
        .iter()
        .find(|(names, _, _)| names.iter().any(|n| n.eq_ignore_ascii_case(ty)))
        .ok_or_else(unknown)?;
    let oid = ObjectIdentifier::new(dotted).map_err(|_| unknown())?;
    Ok((oid, *kind))
}

/// `PrintableString`'s alphabet (X.680 section 41.4).
fn is_printable(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b)
}

/// Undoes RFC 4514 escaping and drops unescaped spaces at both ends. `None` if an escape is
/// malformed, a special character is left unescaped, or the bytes are not UTF-8.
fn unescape(raw: &str) -> Option<String> {
    // (byte, escaped)
    let mut out: Vec<(u8, bool)> = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            let next = *bytes.get(i + 1)?;
            if b" \"#+,;<=>\\".contains(&next) {
                out.push((next, true));
                i += 2;
            } else {
                let hex_pair = bytes.get(i + 1..i + 3)?;
                let decoded = hex::decode(hex_pair).ok()?;
                out.push((*decoded.first()?, true));
                i += 3;
            }
        } else {
            // RFC 4514 section 2.4: these must be escaped (',' and '+' never reach here).
            if b"\";<>".contains(&b) {
                return None;
            }
            out.push((b, false));
            i += 1;
        }
    }
    let is_pad = |&(b, escaped): &(u8, bool)| b == b' ' && !escaped;
    let start = out.iter().position(|c| !is_pad(c)).unwrap_or(out.len());
    let end = out
        .iter()
        .rposition(|c| !is_pad(c))
        .map_or(start, |e| e + 1);
    String::from_utf8(out[start..end].iter().map(|&(b, _)| b).collect()).ok()
}

/// Subject alternative names: DNS names, IP addresses, email addresses and URIs.
///
/// Parsed from `type:value` entries, comma-separated, any number of times (one `--san` option
/// holding a list, or the option repeated): `dns:web.example`, `dns:*.web.example`,
/// `ip:10.0.0.1`, `ip:::1`, `email:admin@web.example`, `uri:https://web.example/`. Types are
/// matched without regard to case (`DNS:` as OpenSSL writes it works too). Exact duplicates are
/// kept once, in first-seen order. DNS names must be ASCII (write internationalized names in
/// their `xn--` form).
///
/// ```
/// use hardkey_x509::SubjectAltNames;
///
/// let sans = SubjectAltNames::parse(["dns:web.example,ip:10.0.0.1", "ip:::1"])?;
/// assert_eq!(sans.len(), 3);
/// assert_eq!(sans.to_string(), "dns:web.example,ip:10.0.0.1,ip:::1");
/// assert!("ip:10.0.0.300".parse::<SubjectAltNames>().is_err());
/// # Ok::<(), hardkey_api::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectAltNames(Vec<GeneralName>);

impl SubjectAltNames {
    /// No names.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses every value (each a comma-separated list) into one set of names.
    pub fn parse<I>(values: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let mut names = Self::new();
        for value in values {
            for entry in value.as_ref().split(',') {
                let name = parse_general_name(entry)?;
                if !names.0.contains(&name) {
                    names.0.push(name);
                }
            }
        }
        Ok(names)
    }

    /// Whether there are no names.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The names, in order.
    pub fn names(&self) -> &[GeneralName] {
        &self.0
    }

    /// Names as they were decoded (from a request's or a certificate's `subjectAltName`),
    /// kept in order, duplicates dropped.
    pub fn from_names(names: impl IntoIterator<Item = GeneralName>) -> Self {
        let mut all = Self::new();
        for name in names {
            if !all.0.contains(&name) {
                all.0.push(name);
            }
        }
        all
    }

    /// The `subjectAltName` extension value.
    pub fn to_extension_value(&self) -> SubjectAltName {
        SubjectAltName(self.0.clone())
    }
}

impl FromStr for SubjectAltNames {
    type Err = Error;

    /// One comma-separated list, like [`SubjectAltNames::parse`] of a single value.
    fn from_str(s: &str) -> Result<Self> {
        Self::parse([s])
    }
}

impl fmt::Display for SubjectAltNames {
    /// The names in the form they are parsed from (`dns:a.example,ip:10.0.0.1`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match name {
                GeneralName::DnsName(s) => write!(f, "dns:{}", s.as_str())?,
                GeneralName::Rfc822Name(s) => write!(f, "email:{}", s.as_str())?,
                GeneralName::UniformResourceIdentifier(s) => write!(f, "uri:{}", s.as_str())?,
                GeneralName::IpAddress(ip) => match ip_from_octets(ip.as_bytes()) {
                    Some(ip) => write!(f, "ip:{ip}")?,
                    None => write!(f, "ip:#{}", hex::encode(ip.as_bytes()))?,
                },
                other => write!(f, "{other:?}")?,
            }
        }
        Ok(())
    }
}

fn ip_from_octets(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn parse_general_name(entry: &str) -> Result<GeneralName> {
    let entry = entry.trim();
    let bad = |what, expected| {
        Error::from(InvalidInput::Value {
            what,
            given: entry.to_owned(),
            expected,
        })
    };
    if entry.is_empty() {
        return Err(bad("subject alternative name", SAN_SYNTAX));
    }
    let (ty, value) = entry
        .split_once(':')
        .ok_or_else(|| bad("subject alternative name", SAN_SYNTAX))?;
    let value = value.trim();
    let ia5 = |s: &str| {
        Ia5String::new(s).map_err(|e| {
            Error::from(InvalidInput::Encoding {
                what: "subject alternative name",
                source: Box::new(e),
            })
        })
    };
    match ty.trim().to_ascii_lowercase().as_str() {
        "dns" => {
            if !is_dns_name(value, true) {
                return Err(bad(
                    "DNS name",
                    "dns: followed by an ASCII host name such as web.example or *.web.example \
                     (letters, digits and hyphens in dot-separated labels of at most 63 \
                     characters; internationalized names in their xn-- form)",
                ));
            }
            Ok(GeneralName::DnsName(ia5(value)?))
        }
        "ip" => value.parse::<IpAddr>().map(GeneralName::from).map_err(|_| {
            bad(
                "IP address",
                "ip: followed by an IPv4 or IPv6 address such as ip:10.0.0.1 or ip:::1",
            )
        }),
        "email" => {
            let ok = value.rsplit_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && local.bytes().all(|b| b.is_ascii_graphic())
                    && is_dns_name(domain, false)
            });
            if !ok {
                return Err(bad(
                    "email address",
                    "email: followed by an ASCII address such as email:admin@web.example",
                ));
            }
            Ok(GeneralName::Rfc822Name(ia5(value)?))
        }
        "uri" => {
            if !is_absolute_uri(value) {
                return Err(bad(
                    "URI",
                    "uri: followed by an absolute ASCII URI with a scheme, such as \
                     uri:https://web.example/ or uri:spiffe://example/web",
                ));
            }
            Ok(GeneralName::UniformResourceIdentifier(ia5(value)?))
        }
        _ => Err(InvalidInput::UnknownName {
            what: "subject alternative name type",
            given: ty.trim().to_owned(),
            expected: "dns, ip, email or uri, e.g. dns:web.example,ip:10.0.0.1",
        }
        .into()),
    }
}

/// A host name in the preferred name syntax (RFC 1034 section 3.5 as relaxed by RFC 1123),
/// optionally with a `*` first label.
fn is_dns_name(name: &str, allow_wildcard: bool) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    labels.iter().enumerate().all(|(i, label)| {
        if i == 0 && allow_wildcard && *label == "*" {
            return labels.len() > 2;
        }
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// `scheme ":" rest`, all printable ASCII without spaces (RFC 3986; RFC 5280 section 4.2.1.6
/// forbids relative references).
fn is_absolute_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && uri.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Encode, Tagged};

    fn err(s: &str) -> String {
        s.parse::<Subject>().unwrap_err().to_string()
    }

    #[test]
    fn subject_matches_x509_cert_and_rfc4514_order() {
        for s in [
            "CN=web.example,O=Example,C=DE",
            "CN=a+OU=b,O=Example\\, Inc.,L=Berlin,ST=Berlin,C=DE",
            "CN=\\#hash\\+plus\\;semi,DC=example,DC=com",
            "2.5.4.3=by oid",
        ] {
            let ours: Subject = s.parse().unwrap();
            let theirs = Name::from_str(s).unwrap();
            assert_eq!(
                ours.as_name().to_der().unwrap(),
                theirs.to_der().unwrap(),
                "{s}"
            );
            assert_eq!(ours.to_string(), theirs.to_string(), "{s}");
        }
        // The most significant RDN is last in the string, first in the sequence.
        let subject: Subject = "CN=web.example,O=Example,C=DE".parse().unwrap();
        let first = &subject.as_name().0[0];
        assert_eq!(first.0.get(0).unwrap().oid, COUNTRY);
    }

    #[test]
    fn subject_is_lenient_about_spaces_and_case() {
        let a: Subject = " cn = web.example , o=Example , c=DE ".parse().unwrap();
        let b: Subject = "CN=web.example,O=Example,C=DE".parse().unwrap();
        assert_eq!(a, b);
        let long: Subject = "commonName=web.example,organizationName=Example,countryName=DE"
            .parse()
            .unwrap();
        assert_eq!(long, b);
        // Escaped spaces survive; hex escapes make UTF-8.
        let s: Subject = "CN=\\ padded\\ ,O=M\\C3\\BCnchen".parse().unwrap();
        assert_eq!(s.to_string(), "CN=\\ padded\\ ,O=München");
        // Hex DER values.
        let s: Subject = "CN=#0c03616263".parse().unwrap();
        assert_eq!(s.to_string(), "CN=abc");
    }

    #[test]
    fn subject_values_get_rfc5280_string_types() {
        let s: Subject = "emailAddress=a@b.example,C=DE,serialNumber=42,CN=x"
            .parse()
            .unwrap();
        let tags: Vec<Tag> = s
            .as_name()
            .0
            .iter()
            .map(|rdn| rdn.0.get(0).unwrap().value.tag())
            .collect();
        assert_eq!(
            tags,
            [
                Tag::Utf8String,
                Tag::PrintableString,
                Tag::PrintableString,
                Tag::Ia5String
            ]
        );
    }

    #[test]
    fn malformed_subjects_are_refused_with_the_offending_part() {
        for (input, needle) in [
            ("", "invalid subject ''"),
            ("   ", "invalid subject"),
            (
                "CN web.example",
                "invalid subject attribute 'CN web.example'",
            ),
            ("CN=a,,O=b", "invalid subject attribute ''"),
            ("XX=a", "unknown subject attribute type 'XX'"),
            ("sha256=a", "unknown subject attribute type 'sha256'"),
            ("1.2.x=a", "unknown subject attribute type '1.2.x'"),
            (
                "1.2.99999999999999999999=a",
                "unknown subject attribute type '1.2.99999999999999999999'",
            ),
            ("1.2..3=a", "unknown subject attribute type '1.2..3'"),
            ("CN=", "a non-empty value"),
            ("CN=a\\", "each backslash escapes"),
            ("CN=a\\zz", "each backslash escapes"),
            ("CN=a\\ff", "a UTF-8 value"),
            ("CN=a;b", "are escaped with a backslash"),
            ("C=Germany", "two-letter"),
            ("C=D1", "two-letter"),
            ("serialNumber=a_b", "PrintableString"),
            ("emailAddress=ü@x", "IA5String"),
            ("CN=#zz", "#HEX"),
            ("CN=#0c05ab", "not valid DER"),
            ("CN=a+CN=a", "at most once"),
        ] {
            let e = err(input);
            assert!(e.contains(needle), "{input:?}: {e}");
        }
        assert!(Subject::from_name(Name::default()).is_err());
    }

    #[test]
    fn sans_parse_lists_and_repeats() {
        let sans = SubjectAltNames::parse([
            "dns:a.example,ip:10.0.0.1,ip:::1,email:a@b.example,uri:https://x.example/p?q=1",
            "DNS:*.a.example",
            "dns:a.example",
        ])
        .unwrap();
        assert_eq!(
            sans.to_string(),
            "dns:a.example,ip:10.0.0.1,ip:::1,email:a@b.example,uri:https://x.example/p?q=1,\
             dns:*.a.example"
        );
        assert_eq!(
            sans.names()[2],
            GeneralName::from("::1".parse::<IpAddr>().unwrap())
        );
        assert!(
            SubjectAltNames::parse(Vec::<String>::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn malformed_sans_are_refused_with_the_offending_entry() {
        for (input, needle) in [
            ("", "invalid subject alternative name ''"),
            ("dns:a,", "invalid subject alternative name ''"),
            (
                "web.example",
                "invalid subject alternative name 'web.example'",
            ),
            ("host:a", "unknown subject alternative name type 'host'"),
            ("dns:", "invalid DNS name"),
            (
                "dns:bad_name.example",
                "invalid DNS name 'dns:bad_name.example'",
            ),
            ("dns:-a.example", "invalid DNS name"),
            ("dns:a..example", "invalid DNS name"),
            ("dns:*.example", "invalid DNS name"),
            ("dns:a.*.example", "invalid DNS name"),
            ("dns:bücher.example", "xn--"),
            ("ip:10.0.0.300", "invalid IP address 'ip:10.0.0.300'"),
            ("ip:[::1]", "invalid IP address"),
            ("email:nobody", "invalid email address"),
            ("email:@b.example", "invalid email address"),
            ("email:a b@b.example", "invalid email address"),
            ("uri:/relative", "invalid URI"),
            ("uri:https://a b", "invalid URI"),
            ("uri:1x:y", "invalid URI"),
        ] {
            let e = input.parse::<SubjectAltNames>().unwrap_err().to_string();
            assert!(e.contains(needle), "{input:?}: {e}");
        }
        let long = format!("dns:{}.example", "a".repeat(64));
        assert!(long.parse::<SubjectAltNames>().is_err());
    }
}
