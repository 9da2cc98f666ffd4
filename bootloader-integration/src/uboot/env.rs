//! The U-Boot environment codec. Pure: bytes in, bytes out, no I/O.
//!
//! One copy on storage is `u32 crc` (CRC-32 over the whole data area, padding included,
//! little-endian), then — redundant layout only — a `u8 flags`, then the data area:
//! `name=value\0name=value\0\0` padded to the end with 0x00 (U-Boot's `saveenv`) or 0xFF
//! (`mkenvimage`'s default). Big-endian targets (`mkenvimage -b`) are not supported.

use crate::BootError;
use crate::scheme::EnvVars;
use crate::vars::VarList;

/// Bytes of the CRC at the start of every copy.
pub const CRC_LEN: usize = 4;

/// Bytes before the data area: 4 (CRC) for a single copy, 5 (CRC + flags) when redundant.
pub const fn header_len(redundant: bool) -> usize {
    if redundant { CRC_LEN + 1 } else { CRC_LEN }
}

/// Flag byte of the active copy in the boolean (NOR) scheme.
pub const FLAG_ACTIVE: u8 = 1;
/// Flag byte of the obsolete copy in the boolean (NOR) scheme.
pub const FLAG_OBSOLETE: u8 = 0;

/// How the flag byte of a redundant pair tells which copy is current.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum FlagScheme {
    /// Counter (block devices, files, NAND, UBI, FAT): the copy with the larger flag is
    /// current, with wrap-around (255 → 0); a save writes the other copy with flag + 1.
    #[default]
    Incremental,
    /// NOR flash: active = 1, obsolete = 0; a save writes the other copy with 1, then clears
    /// the old copy's flag byte to 0.
    Boolean,
}

/// Errors of the U-Boot environment codec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// The image is not longer than its header.
    #[error("environment image of {len} bytes is too small (header is {header} bytes)")]
    TooSmall {
        /// Image length.
        len: usize,
        /// Header length.
        header: usize,
    },
    /// The stored CRC does not match the data.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the data area.
        computed: u32,
    },
    /// The last variable runs to the end of the data area without a terminating NUL.
    #[error("environment data is not terminated")]
    Unterminated,
    /// The variables do not fit.
    #[error("environment needs {needed} bytes but only {available} are available")]
    TooLarge {
        /// Bytes needed for the data (including both terminating NULs).
        needed: usize,
        /// Bytes in the data area.
        available: usize,
    },
    /// The name is empty or contains `=` or NUL.
    #[error("invalid variable name {0:?}")]
    InvalidName(String),
    /// The value contains NUL.
    #[error("value of {0:?} contains a NUL byte")]
    InvalidValue(String),
}

/// One decoded copy: the variables and, in the redundant layout, the flag byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedCopy {
    /// The variables.
    pub env: UBootEnv,
    /// The flag byte (redundant layout only).
    pub flags: Option<u8>,
}

/// A U-Boot environment: ordered `name=value` variables.
///
/// Variables keep their order through decode/encode; [`UBootEnv::set`] of a new variable
/// appends it. Names and values are bytes (U-Boot allows anything but NUL, and `=` in names);
/// [`UBootEnv::get`] is the UTF-8 view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UBootEnv {
    vars: VarList,
}

impl UBootEnv {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one copy (`redundant`: with the flag byte) and checks its CRC.
    pub fn from_bytes(bytes: &[u8], redundant: bool) -> Result<Self, EnvError> {
        Self::decode(bytes, redundant).map(|d| d.env)
    }

    /// Decodes one copy, returning the flag byte too.
    pub fn decode(bytes: &[u8], redundant: bool) -> Result<DecodedCopy, EnvError> {
        let header = header_len(redundant);
        if bytes.len() <= header {
            return Err(EnvError::TooSmall { len: bytes.len(), header });
        }
        let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let data = &bytes[header..];
        let computed = crc32fast::hash(data);
        if stored != computed {
            return Err(EnvError::Crc { stored, computed });
        }
        Ok(DecodedCopy { env: Self::parse_data(data)?, flags: redundant.then(|| bytes[CRC_LEN]) })
    }

    /// Parses a data area (no header, no CRC check): NUL-separated `name=value` entries up to
    /// the first empty entry. Entries without `=` or with an empty name are skipped (as
    /// libubootenv does); a repeated name keeps its first position and its last value.
    pub fn parse_data(data: &[u8]) -> Result<Self, EnvError> {
        let mut vars = VarList::default();
        let mut rest = data;
        loop {
            let Some(end) = rest.iter().position(|&b| b == 0) else {
                return if rest.is_empty() { Ok(Self { vars }) } else { Err(EnvError::Unterminated) };
            };
            let entry = &rest[..end];
            if entry.is_empty() {
                return Ok(Self { vars });
            }
            if let Some(eq) = entry.iter().position(|&b| b == b'=')
                && eq > 0
            {
                vars.set(&entry[..eq], &entry[eq + 1..]);
            }
            rest = &rest[end + 1..];
        }
    }

    /// The data area contents without padding: `name=value\0…\0`.
    pub fn data_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in self.vars.iter() {
            out.extend_from_slice(n);
            out.push(b'=');
            out.extend_from_slice(v);
            out.push(0);
        }
        if out.is_empty() {
            // An empty environment is still terminated by an empty entry.
            out.push(0);
        }
        out.push(0);
        out
    }

    /// Encodes one copy of `size` bytes (the `fw_env.config` env size). `flags` selects the
    /// redundant layout and is its flag byte; `pad` fills the rest of the data area (0x00 as
    /// U-Boot's `saveenv`, 0xFF as `mkenvimage`).
    pub fn to_bytes(&self, size: usize, flags: Option<u8>, pad: u8) -> Result<Vec<u8>, EnvError> {
        let header = header_len(flags.is_some());
        let available = size.saturating_sub(header);
        let data = self.data_bytes();
        if data.len() > available {
            return Err(EnvError::TooLarge { needed: data.len(), available });
        }
        let mut out = vec![pad; size];
        out[header..header + data.len()].copy_from_slice(&data);
        let crc = crc32fast::hash(&out[header..]);
        out[..CRC_LEN].copy_from_slice(&crc.to_le_bytes());
        if let Some(f) = flags {
            out[CRC_LEN] = f;
        }
        Ok(out)
    }

    /// The value of `name` if it is set and valid UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name.as_bytes()).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The raw value of `name`.
    pub fn get_bytes(&self, name: &[u8]) -> Option<&[u8]> {
        self.vars.get(name)
    }

    /// Sets `name` to `value` (in memory). An existing variable keeps its position.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), EnvError> {
        self.set_bytes(name.as_bytes(), value.as_bytes())
    }

    /// Sets `name` to `value` as bytes (in memory).
    pub fn set_bytes(&mut self, name: &[u8], value: &[u8]) -> Result<(), EnvError> {
        if name.is_empty() || name.contains(&b'=') || name.contains(&0) {
            return Err(EnvError::InvalidName(String::from_utf8_lossy(name).into_owned()));
        }
        if value.contains(&0) {
            return Err(EnvError::InvalidValue(String::from_utf8_lossy(name).into_owned()));
        }
        self.vars.set(name, value);
        Ok(())
    }

    /// Removes `name` (in memory); returns whether it was set.
    pub fn remove(&mut self, name: &str) -> bool {
        self.vars.remove(name.as_bytes())
    }

    /// The variables in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.vars.iter()
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An environment from `(name, value)` pairs, in order.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, EnvError> {
        let mut env = Self::new();
        for (n, v) in pairs {
            env.set(n, v)?;
        }
        Ok(env)
    }
}

impl EnvVars for UBootEnv {
    fn var(&self, name: &str) -> Option<&str> {
        self.get(name)
    }

    fn set_var(&mut self, name: &str, value: &str) -> Result<(), BootError> {
        self.set(name, value).map_err(|e| BootError::InvalidVariable {
            variable: name.to_owned(),
            reason: match e {
                EnvError::InvalidValue(_) => "value contains a nul byte",
                _ => "name is empty or contains '=' or a nul byte",
            },
        })
    }

    fn remove_var(&mut self, name: &str) {
        self.remove(name);
    }
}

/// Which copy of a redundant pair is current, as U-Boot's `fw_env.c` decides it. `copies[i]`
/// is `Some(flag byte)` if copy `i` passed its CRC check. `None`: neither is valid.
pub fn pick_current(copies: [Option<u8>; 2], scheme: FlagScheme) -> Option<usize> {
    match copies {
        [None, None] => None,
        [Some(_), None] => Some(0),
        [None, Some(_)] => Some(1),
        [Some(f0), Some(f1)] => Some(match scheme {
            FlagScheme::Incremental => {
                if f0 == 255 && f1 == 0 {
                    1
                } else if (f1 == 255 && f0 == 0) || f0 >= f1 {
                    0
                } else {
                    1
                }
            }
            FlagScheme::Boolean => {
                if f0 == FLAG_ACTIVE && f1 == FLAG_OBSOLETE {
                    0
                } else if f0 == FLAG_OBSOLETE && f1 == FLAG_ACTIVE {
                    1
                } else if f0 == f1 || f0 == 0xFF {
                    // Equal (e.g. a save interrupted before clearing the old flag) → copy 0;
                    // 0xFF is erased flash, which a save only leaves on the new copy.
                    0
                } else if f1 == 0xFF {
                    1
                } else {
                    0
                }
            }
        }),
    }
}

/// The flag byte for the copy a save writes, given the current copy's flag byte.
pub fn next_flags(current: u8, scheme: FlagScheme) -> u8 {
    match scheme {
        FlagScheme::Incremental => current.wrapping_add(1),
        FlagScheme::Boolean => FLAG_ACTIVE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_the_documented_layout() {
        let env = UBootEnv::from_pairs([("bootdelay", "3"), ("BOOT_ORDER", "A B")]).unwrap();
        let bytes = env.to_bytes(32, None, 0).unwrap();
        assert_eq!(&bytes[4..26], b"bootdelay=3\0BOOT_ORDER");
        assert_eq!(&bytes[26..32], b"=A B\0\0");
        assert_eq!(u32::from_le_bytes(bytes[..4].try_into().unwrap()), crc32fast::hash(&bytes[4..]));
        let red = env.to_bytes(40, Some(7), 0xFF).unwrap();
        assert_eq!(red[4], 7);
        assert_eq!(&red[5..27], b"bootdelay=3\0BOOT_ORDER");
        assert!(red[33..].iter().all(|&b| b == 0xFF));
        assert_eq!(UBootEnv::from_bytes(&red, true).unwrap(), env);
        assert_eq!(UBootEnv::decode(&red, true).unwrap().flags, Some(7));
        assert_eq!(UBootEnv::from_bytes(&bytes, false).unwrap(), env);
    }

    #[test]
    fn empty_env_has_two_nuls() {
        let bytes = UBootEnv::new().to_bytes(8, None, 0xFF).unwrap();
        assert_eq!(&bytes[4..], &[0, 0, 0xFF, 0xFF]);
        assert!(UBootEnv::from_bytes(&bytes, false).unwrap().is_empty());
    }

    #[test]
    fn exactly_full_and_too_large() {
        let env = UBootEnv::from_pairs([("a", "bc")]).unwrap();
        // "a=bc\0\0" = 6 bytes of data.
        assert!(env.to_bytes(4 + 6, None, 0).is_ok());
        assert_eq!(env.to_bytes(4 + 5, None, 0), Err(EnvError::TooLarge { needed: 6, available: 5 }));
        assert!(env.to_bytes(5 + 5, Some(0), 0).is_err());
    }

    #[test]
    fn crc_is_checked() {
        let mut bytes = UBootEnv::from_pairs([("a", "b")]).unwrap().to_bytes(64, None, 0).unwrap();
        bytes[40] ^= 1; // padding is covered by the CRC too
        assert!(matches!(UBootEnv::from_bytes(&bytes, false), Err(EnvError::Crc { .. })));
    }

    #[test]
    fn parse_data_edge_cases() {
        let env = UBootEnv::parse_data(b"a=1\0noeq\0=x\0b=\0a=2\0\0junk").unwrap();
        let vars: Vec<_> = env.iter().collect();
        assert_eq!(vars, vec![(&b"a"[..], &b"2"[..]), (&b"b"[..], &b""[..])]);
        assert_eq!(UBootEnv::parse_data(b"a=1"), Err(EnvError::Unterminated));
        // A full data area whose last entry ends exactly at the end is fine.
        assert_eq!(UBootEnv::parse_data(b"a=1\0").unwrap().get("a"), Some("1"));
        assert!(UBootEnv::parse_data(b"").unwrap().is_empty());
    }

    #[test]
    fn set_keeps_order_and_validates() {
        let mut env = UBootEnv::from_pairs([("x", "1"), ("y", "2"), ("z", "3")]).unwrap();
        env.set("y", "20").unwrap();
        env.set("w", "0").unwrap();
        assert!(env.remove("x"));
        assert!(!env.remove("x"));
        let names: Vec<_> = env.iter().map(|(n, _)| n.to_vec()).collect();
        assert_eq!(names, vec![b"y".to_vec(), b"z".to_vec(), b"w".to_vec()]);
        assert_eq!(env.get("y"), Some("20"));
        assert!(env.set("", "v").is_err());
        assert!(env.set("a=b", "v").is_err());
        assert!(env.set("a", "v\0").is_err());
        env.set_bytes(b"bin", &[0xFF, 0xFE]).unwrap();
        assert_eq!(env.get("bin"), None);
        assert_eq!(env.get_bytes(b"bin"), Some(&[0xFF, 0xFE][..]));
    }

    #[test]
    fn pick_current_table() {
        use FlagScheme::{Boolean, Incremental};
        type Case = ([Option<u8>; 2], FlagScheme, Option<usize>);
        let cases: &[Case] = &[
            ([None, None], Incremental, None),
            ([Some(3), None], Incremental, Some(0)),
            ([None, Some(3)], Incremental, Some(1)),
            ([Some(3), Some(4)], Incremental, Some(1)),
            ([Some(4), Some(3)], Incremental, Some(0)),
            ([Some(4), Some(4)], Incremental, Some(0)),
            ([Some(255), Some(0)], Incremental, Some(1)),
            ([Some(0), Some(255)], Incremental, Some(0)),
            ([Some(254), Some(255)], Incremental, Some(1)),
            ([Some(1), Some(0)], Boolean, Some(0)),
            ([Some(0), Some(1)], Boolean, Some(1)),
            ([Some(1), Some(1)], Boolean, Some(0)),
            ([Some(0xFF), Some(1)], Boolean, Some(0)),
            ([Some(0), Some(0xFF)], Boolean, Some(1)),
            ([None, Some(0)], Boolean, Some(1)),
        ];
        for (copies, scheme, want) in cases {
            assert_eq!(pick_current(*copies, *scheme), *want, "{copies:?} {scheme:?}");
        }
        assert_eq!(next_flags(255, Incremental), 0);
        assert_eq!(next_flags(7, Incremental), 8);
        assert_eq!(next_flags(0, Boolean), 1);
    }

    fn arb_env() -> impl Strategy<Value = UBootEnv> {
        let name = proptest::collection::vec(1u8..=255, 1..12).prop_filter("no '='", |n| !n.contains(&b'='));
        let value = proptest::collection::vec(1u8..=255, 0..40);
        proptest::collection::vec((name, value), 0..20).prop_map(|pairs| {
            let mut env = UBootEnv::new();
            for (n, v) in pairs {
                env.set_bytes(&n, &v).unwrap();
            }
            env
        })
    }

    proptest! {
        #[test]
        fn round_trips(env in arb_env(), redundant: bool, flags: u8, pad: u8, slack in 0usize..64) {
            let size = header_len(redundant) + env.data_bytes().len() + slack;
            let bytes = env.to_bytes(size, redundant.then_some(flags), pad).unwrap();
            prop_assert_eq!(bytes.len(), size);
            let back = UBootEnv::decode(&bytes, redundant).unwrap();
            prop_assert_eq!(back.flags, redundant.then_some(flags));
            prop_assert_eq!(back.env, env);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), redundant: bool) {
            let _ = UBootEnv::decode(&bytes, redundant);
            let _ = UBootEnv::parse_data(&bytes);
        }

        #[test]
        fn decoder_never_panics_on_valid_crc(data in proptest::collection::vec(any::<u8>(), 1..600)) {
            // Random data with a correct CRC reaches the variable parser.
            let mut bytes = crc32fast::hash(&data).to_le_bytes().to_vec();
            bytes.extend_from_slice(&data);
            if let Ok(d) = UBootEnv::decode(&bytes, false) {
                // Whatever decodes re-encodes to the same variables.
                let size = bytes.len().max(CRC_LEN + d.env.data_bytes().len());
                let again = d.env.to_bytes(size, None, 0).unwrap();
                prop_assert_eq!(UBootEnv::from_bytes(&again, false).unwrap(), d.env);
            }
        }
    }
}
