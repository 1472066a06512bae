//! When a certificate is valid, and its serial number.

use std::time::{Duration, SystemTime};

use der::DateTime;
use der::asn1::{GeneralizedTime, UtcTime};
use rand::RngCore;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use hardkey_api::{Error, InvalidInput, Operation, Result};

/// How far before "now" a new certificate's `notBefore` is set: 5 minutes, so that a relying
/// party whose clock lags a little behind ours accepts the certificate at once. (OpenSSL sets
/// `notBefore` to the current second; a freshly issued certificate is then "not yet valid"
/// for any peer a few seconds behind.)
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

const DAY: u64 = 24 * 60 * 60;

/// The validity of a certificate issued now for `days` days: from [`BACKDATE`] before now
/// until `days` × 24 hours after now, to the second. Dates before 2050 are `UTCTime`, later
/// ones `GeneralizedTime` (RFC 5280 section 4.1.2.5).
///
/// Fails if `days` is 0 or the end date would be after the year 9999.
pub fn validity(days: u32) -> Result<Validity> {
    validity_at(SystemTime::now(), days)
}

/// [`validity`] as if issued at `now`.
pub fn validity_at(now: SystemTime, days: u32) -> Result<Validity> {
    if days == 0 {
        return Err(InvalidInput::Config {
            what: "certificate validity",
            reason: "it must be at least 1 day",
        }
        .into());
    }
    let too_late = || {
        Error::from(InvalidInput::Config {
            what: "certificate validity",
            reason: "the certificate would expire after the year 9999; give fewer days",
        })
    };
    let not_before = now.checked_sub(BACKDATE).ok_or_else(too_early)?;
    let not_after = now
        .checked_add(Duration::from_secs(u64::from(days) * DAY))
        .ok_or_else(too_late)?;
    Ok(Validity {
        not_before: rfc5280_time(not_before).map_err(|_| too_early())?,
        not_after: rfc5280_time(not_after).map_err(|_| too_late())?,
    })
}

fn too_early() -> Error {
    InvalidInput::Config {
        what: "certificate validity",
        reason: "the clock is before 1970; set the system time",
    }
    .into()
}

/// `UTCTime` through 2049, `GeneralizedTime` from 2050 on.
fn rfc5280_time(time: SystemTime) -> der::Result<Time> {
    let date = DateTime::from_system_time(time)?;
    if date.year() <= UtcTime::MAX_YEAR {
        Ok(Time::UtcTime(UtcTime::from_date_time(date)?))
    } else {
        Ok(Time::GeneralTime(GeneralizedTime::from_date_time(date)))
    }
}

/// A random serial number with 158 random bits from the operating system: positive, never zero,
/// at most 20 bytes encoded (RFC 5280 section 4.1.2.2; CA/Browser Forum baseline requirements ask
/// for at least 64 random bits).
pub fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::backend("host random generator", Operation::Sign, e))?;
    serial_from_bytes(bytes)
}

fn serial_from_bytes(mut bytes: [u8; 20]) -> Result<SerialNumber> {
    // A clear top bit keeps the INTEGER positive within 20 bytes; a set last bit keeps it
    // from being zero.
    bytes[0] &= 0x7f;
    bytes[19] |= 0x01;
    SerialNumber::new(&bytes).map_err(|e| {
        InvalidInput::Encoding {
            what: "serial number",
            source: Box::new(e),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Decode, Encode};

    #[test]
    fn validity_is_backdated_and_switches_to_generalized_time_in_2050() {
        let now = SystemTime::UNIX_EPOCH
            + Duration::from_secs(1_700_000_000)
            + Duration::from_millis(700);
        let v = validity_at(now, 30).unwrap();
        assert_eq!(
            v.not_before.to_unix_duration().as_secs(),
            1_700_000_000 - 300
        );
        assert_eq!(
            v.not_after.to_unix_duration().as_secs(),
            1_700_000_000 + 30 * DAY
        );
        assert!(matches!(v.not_before, Time::UtcTime(_)));
        // 2049-12-31T23:59:59Z is the last UTCTime.
        let last_utc = SystemTime::UNIX_EPOCH + Duration::from_secs(2_524_607_999);
        assert!(matches!(rfc5280_time(last_utc).unwrap(), Time::UtcTime(_)));
        assert!(matches!(
            rfc5280_time(last_utc + Duration::from_secs(1)).unwrap(),
            Time::GeneralTime(_)
        ));
        let long = validity_at(now, 365 * 50).unwrap();
        assert!(matches!(long.not_after, Time::GeneralTime(_)));
    }

    #[test]
    fn bad_validities_are_refused() {
        let e = validity(0).unwrap_err().to_string();
        assert!(e.contains("at least 1 day"), "{e}");
        let e = validity(u32::MAX).unwrap_err().to_string();
        assert!(e.contains("9999"), "{e}");
        let e = validity_at(SystemTime::UNIX_EPOCH, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("before 1970"), "{e}");
    }

    #[test]
    fn serials_are_positive_nonzero_and_at_most_20_bytes() {
        for bytes in [[0xffu8; 20], [0u8; 20], [0x80; 20]] {
            let serial = serial_from_bytes(bytes).unwrap();
            let der = serial.to_der().unwrap();
            // INTEGER tag, length <= 20, first content byte without the sign bit.
            assert_eq!(der[0], 0x02);
            assert!(der[1] <= 20 && der[1] > 0, "{der:02x?}");
            assert!(der[2] & 0x80 == 0);
            assert_eq!(SerialNumber::from_der(&der).unwrap(), serial);
        }
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a, b);
        assert!(a.as_bytes().len() <= 20);
    }
}
