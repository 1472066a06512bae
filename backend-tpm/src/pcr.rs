//! PCR selections: the `sha256:0,7` text people write, and the `TPML_PCR_SELECTION` the TPM
//! reads (in `TPM2_PolicyPCR`, in `TPM2_PCR_Read`, and marshalled in a sealed-data file's
//! policy).
//!
//! A selection is kept canonical (banks in TPM algorithm-id order, each bank once, indices
//! ascending) so that the PCR digest computed on the host, the trial policy at sealing time
//! and the real policy at unsealing time all see the PCRs in the same order.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use hardkey_api::{Error, InvalidInput, Result};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::PcrSelectionList;
use tss_esapi::tss2_esys::{TPML_PCR_SELECTION, TPMS_PCR_SELECTION};

/// PCR indices hardkey accepts: 0 to 23, the PCRs of a PC-client TPM.
pub const PCR_COUNT: u8 = 24;

/// `sizeofSelect` of the selections hardkey writes: 3 bytes for 24 PCRs.
const SIZE_OF_SELECT: u8 = 3;

/// A PCR bank: the hash algorithm a set of PCRs is kept in. Ordered as the TPM numbers the
/// algorithms (`TPM_ALG_SHA1` 0x04 < `SHA256` 0x0B < `SHA384` 0x0C < `SHA512` 0x0D).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PcrBank {
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl PcrBank {
    const ALL: [Self; 4] = [Self::Sha1, Self::Sha256, Self::Sha384, Self::Sha512];

    /// The name used in selections (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// The TPM algorithm id (`TPM_ALG_ID`).
    pub fn algorithm_id(self) -> u16 {
        match self {
            Self::Sha1 => 0x0004,
            Self::Sha256 => 0x000B,
            Self::Sha384 => 0x000C,
            Self::Sha512 => 0x000D,
        }
    }

    fn from_algorithm_id(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.algorithm_id() == id)
    }

    pub(crate) fn hashing_algorithm(self) -> HashingAlgorithm {
        match self {
            Self::Sha1 => HashingAlgorithm::Sha1,
            Self::Sha256 => HashingAlgorithm::Sha256,
            Self::Sha384 => HashingAlgorithm::Sha384,
            Self::Sha512 => HashingAlgorithm::Sha512,
        }
    }
}

impl fmt::Display for PcrBank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of PCRs: for each bank, some of PCRs 0-23. Parse one from `sha256:0,7`,
/// `sha256:0-7`, or several banks joined by `+` (`sha1:0+sha256:0,7`, as tpm2-tools writes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PcrSelection {
    /// Bank to bitmap of selected PCRs (bit `i` is PCR `i`); no empty bitmaps.
    banks: BTreeMap<PcrBank, u32>,
}

fn syntax(reason: &'static str) -> Error {
    InvalidInput::Config {
        what: "PCR selection",
        reason,
    }
    .into()
}

fn malformed(reason: &'static str) -> Error {
    InvalidInput::Malformed {
        what: "TPML_PCR_SELECTION",
        reason,
    }
    .into()
}

impl FromStr for PcrSelection {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let mut banks = BTreeMap::new();
        for part in text.split('+') {
            let (bank, list) = part.trim().split_once(':').ok_or_else(|| {
                syntax("expected BANK:PCRS, like sha256:0,7 or sha256:0-7+sha1:0")
            })?;
            let bank = PcrBank::ALL
                .into_iter()
                .find(|b| b.name().eq_ignore_ascii_case(bank.trim()))
                .ok_or_else(|| InvalidInput::UnknownName {
                    what: "PCR bank",
                    given: bank.trim().to_owned(),
                    expected: "sha1, sha256, sha384 or sha512",
                })?;
            let mut bits = 0u32;
            for item in list.split(',') {
                let item = item.trim();
                let (first, last) = match item.split_once('-') {
                    Some((a, b)) => (index(a)?, index(b)?),
                    None => (index(item)?, index(item)?),
                };
                if first > last {
                    return Err(syntax("a PCR range must go upwards, like 0-7"));
                }
                for i in first..=last {
                    bits |= 1 << i;
                }
            }
            *banks.entry(bank).or_insert(0) |= bits;
        }
        Ok(Self { banks })
    }
}

/// One PCR index, 0 to 23.
fn index(text: &str) -> Result<u8> {
    match text.trim().parse::<u8>() {
        Ok(i) if i < PCR_COUNT => Ok(i),
        Ok(_) => Err(syntax("PCR indices go from 0 to 23")),
        Err(_) => Err(syntax(
            "PCRs are numbers from 0 to 23, separated by commas, like sha256:0,7",
        )),
    }
}

impl fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (bank, _)) in self.banks.iter().enumerate() {
            if n > 0 {
                f.write_str("+")?;
            }
            write!(f, "{bank}:")?;
            for (m, i) in self.pcrs(*bank).iter().enumerate() {
                if m > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{i}")?;
            }
        }
        Ok(())
    }
}

impl PcrSelection {
    /// The banks selected, in TPM order.
    pub fn banks(&self) -> impl Iterator<Item = PcrBank> + '_ {
        self.banks.keys().copied()
    }

    /// The PCRs selected in `bank`, ascending.
    pub fn pcrs(&self, bank: PcrBank) -> Vec<u8> {
        let bits = self.banks.get(&bank).copied().unwrap_or(0);
        (0..PCR_COUNT).filter(|i| bits & (1 << i) != 0).collect()
    }

    /// Every selected (bank, PCR), in the order the TPM digests them.
    pub(crate) fn slots(&self) -> Vec<(PcrBank, u8)> {
        self.banks()
            .flat_map(|bank| self.pcrs(bank).into_iter().map(move |i| (bank, i)))
            .collect()
    }

    /// The marshalled `TPML_PCR_SELECTION` (big-endian count, then per bank the algorithm
    /// id, `sizeofSelect` = 3 and the 3-byte bitmap).
    pub fn marshall(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.banks.len() * 6);
        out.extend_from_slice(&(self.banks.len() as u32).to_be_bytes());
        for (bank, bits) in &self.banks {
            out.extend_from_slice(&bank.algorithm_id().to_be_bytes());
            out.push(SIZE_OF_SELECT);
            out.extend_from_slice(&bits.to_le_bytes()[..usize::from(SIZE_OF_SELECT)]);
        }
        out
    }

    /// Reads a marshalled `TPML_PCR_SELECTION` from the start of `bytes`; returns it and the
    /// bytes after it.
    pub fn unmarshall(bytes: &[u8]) -> Result<(Self, &[u8])> {
        let (count, mut rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| malformed("shorter than its count"))?;
        let count = u32::from_be_bytes(*count);
        if count == 0 || count > 16 {
            return Err(malformed(
                "it selects no bank, or more banks than a TPM has",
            ));
        }
        let mut banks = BTreeMap::new();
        for _ in 0..count {
            let (alg, after) = rest
                .split_first_chunk::<2>()
                .ok_or_else(|| malformed("a selection is cut short"))?;
            let bank = PcrBank::from_algorithm_id(u16::from_be_bytes(*alg))
                .ok_or_else(|| malformed("a bank is not SHA-1, SHA-256, SHA-384 or SHA-512"))?;
            let (&size, after) = after
                .split_first()
                .ok_or_else(|| malformed("a selection is cut short"))?;
            let size = usize::from(size);
            if !(1..=4).contains(&size) || after.len() < size {
                return Err(malformed("a bitmap is empty, over 4 bytes or cut short"));
            }
            let mut le = [0u8; 4];
            le[..size].copy_from_slice(&after[..size]);
            let bits = u32::from_le_bytes(le);
            if bits >> PCR_COUNT != 0 {
                return Err(malformed("it selects a PCR above 23"));
            }
            if bits == 0 || banks.insert(bank, bits).is_some() {
                return Err(malformed("a bank is empty or given twice"));
            }
            rest = &after[size..];
        }
        Ok((Self { banks }, rest))
    }

    /// The selection as the TSS structure, in this canonical order (tss-esapi's own builder
    /// orders banks as a hash map happens to).
    pub(crate) fn to_tss(&self) -> tss_esapi::Result<PcrSelectionList> {
        let mut tpml = TPML_PCR_SELECTION::default();
        for (n, (bank, bits)) in self.banks.iter().enumerate() {
            let mut select = [0u8; 4];
            select.copy_from_slice(&bits.to_le_bytes());
            tpml.pcrSelections[n] = TPMS_PCR_SELECTION {
                hash: bank.algorithm_id(),
                sizeofSelect: SIZE_OF_SELECT,
                pcrSelect: select,
            };
            tpml.count = n as u32 + 1;
        }
        PcrSelectionList::try_from(tpml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(text: &str) -> PcrSelection {
        text.parse().unwrap()
    }

    #[test]
    fn parses_banks_lists_and_ranges() {
        let s = sel("sha256:0,7");
        assert_eq!(s.banks().collect::<Vec<_>>(), [PcrBank::Sha256]);
        assert_eq!(s.pcrs(PcrBank::Sha256), [0, 7]);
        assert_eq!(s.to_string(), "sha256:0,7");
        // Canonical: banks in TPM order, indices sorted and merged, whitespace ignored.
        let s = sel(" SHA256 : 7, 0-2 + sha1:16 + sha256:3");
        assert_eq!(s.to_string(), "sha1:16+sha256:0,1,2,3,7");
        assert_eq!(
            s.slots(),
            [
                (PcrBank::Sha1, 16),
                (PcrBank::Sha256, 0),
                (PcrBank::Sha256, 1),
                (PcrBank::Sha256, 2),
                (PcrBank::Sha256, 3),
                (PcrBank::Sha256, 7)
            ]
        );
        assert_eq!(sel("sha384:23"), sel("sha384:23-23"));
    }

    #[test]
    fn refuses_bad_selections_with_a_reason() {
        for (text, needle) in [
            ("", "BANK:PCRS"),
            ("sha256", "BANK:PCRS"),
            ("md5:0", "PCR bank"),
            ("sha256:", "numbers from 0 to 23"),
            ("sha256:24", "from 0 to 23"),
            ("sha256:7-3", "upwards"),
            ("sha256:x", "numbers"),
            ("sha256:0,,1", "numbers"),
        ] {
            let err = text.parse::<PcrSelection>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn marshalls_tpml_pcr_selection() {
        // count 1, TPM_ALG_SHA256, sizeofSelect 3, PCR 0 and 7 -> 0x81, PCR 16 -> byte 2 bit 0.
        let s = sel("sha256:0,7,16");
        let bytes = s.marshall();
        assert_eq!(bytes, [0, 0, 0, 1, 0x00, 0x0b, 3, 0x81, 0x00, 0x01]);
        let (back, rest) = PcrSelection::unmarshall(&bytes).unwrap();
        assert_eq!(back, s);
        assert!(rest.is_empty());
        let two = sel("sha1:23+sha256:8");
        assert_eq!(
            two.marshall(),
            [0, 0, 0, 2, 0, 4, 3, 0, 0, 0x80, 0, 0x0b, 3, 0, 1, 0]
        );
        let mut trailing = two.marshall();
        trailing.extend_from_slice(&[9, 9]);
        let (back, rest) = PcrSelection::unmarshall(&trailing).unwrap();
        assert_eq!((back, rest), (two, &[9u8, 9][..]));
        // A 4-byte bitmap from another writer reads the same.
        let (four, _) = PcrSelection::unmarshall(&[0, 0, 0, 1, 0, 0x0b, 4, 0x81, 0, 1, 0]).unwrap();
        assert_eq!(four, s);
    }

    #[test]
    fn refuses_malformed_tpml() {
        for bytes in [
            &[0, 0, 0][..],
            &[0, 0, 0, 0],
            &[0, 0, 0, 1, 0, 0x0b, 3, 1],
            &[0, 0, 0, 1, 0, 0x99, 3, 1, 0, 0],
            &[0, 0, 0, 1, 0, 0x0b, 0],
            &[0, 0, 0, 1, 0, 0x0b, 3, 0, 0, 0],
            &[0, 0, 0, 1, 0, 0x0b, 4, 0, 0, 0, 1],
            &[0, 0, 0, 2, 0, 0x0b, 3, 1, 0, 0, 0, 0x0b, 3, 2, 0, 0],
        ] {
            assert!(PcrSelection::unmarshall(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn converts_to_tss_in_canonical_order() {
        let list = sel("sha256:1+sha1:0,2").to_tss().unwrap();
        let banks: Vec<_> = list
            .get_selections()
            .iter()
            .map(|s| (s.hashing_algorithm(), s.selected().len()))
            .collect();
        assert_eq!(
            banks,
            [(HashingAlgorithm::Sha1, 2), (HashingAlgorithm::Sha256, 1)]
        );
    }
}
