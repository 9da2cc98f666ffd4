//! The `fw_env.config` format shared by U-Boot's tools and libubootenv.
//!
//! One or two lines (two: redundant environment), each
//! `device offset envsize [sectorsize [nsectors [disablelock]]]`:
//! - `offset` is C-style (`0x` hex, leading `0` octal, else decimal) and may be negative on a
//!   block device, counting from its end;
//! - `envsize`, `sectorsize` and `nsectors` are hex, with or without `0x`;
//! - the sixth column is libubootenv's `disablelock` (decimal).
//!
//! `#` starts a comment (a whole line, or the rest of a line after the fields); blank lines are
//! ignored. A line with one or two fields is an error (libubootenv silently skips it), as is a
//! third device line.

use std::path::{Path, PathBuf};

use super::env::FlagScheme;
use crate::BootError;

/// One environment copy's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvDevice {
    /// Device or file (`/dev/mmcblk0`, `/boot/uboot.env`).
    pub path: PathBuf,
    /// Byte offset; negative counts from the end of the device.
    pub offset: i64,
    /// Size of the copy in bytes (header included).
    pub env_size: usize,
    /// Erase sector size (MTD only; informational here).
    pub sector_size: Option<u64>,
    /// Number of sectors (MTD only; informational here).
    pub sectors: Option<u64>,
    /// libubootenv's `disablelock` column (MTD lock handling; informational here).
    pub disable_lock: Option<i64>,
}

/// A parsed `fw_env.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvConfig {
    /// One device (single copy) or two (redundant pair).
    pub devices: Vec<EnvDevice>,
    /// Flag scheme of a redundant pair. `fw_env.config` cannot say (the tools ask the MTD
    /// driver), so it defaults to [`FlagScheme::Incremental`]; set it for NOR flash layouts.
    pub flag_scheme: FlagScheme,
}

impl FwEnvConfig {
    /// Parses the text of an `fw_env.config`.
    pub fn parse(text: &str) -> Result<Self, BootError> {
        Self::parse_named(text, Path::new("<string>"))
    }

    /// Reads and parses the `fw_env.config` at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, BootError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BootError::Io { path: path.to_owned(), source })?;
        Self::parse_named(&text, path)
    }

    fn parse_named(text: &str, path: &Path) -> Result<Self, BootError> {
        let err = |line: usize, message: String| BootError::Config { path: path.to_owned(), line, message };
        let mut devices = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.split('#').next().unwrap_or("");
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 3 {
                if fields.is_empty() {
                    continue;
                }
                return Err(err(line_no, format!("expected `device offset envsize`, got {:?}", raw.trim())));
            }
            if fields.len() > 6 {
                return Err(err(line_no, format!("too many fields in {:?}", raw.trim())));
            }
            if devices.len() == 2 {
                return Err(err(line_no, "more than two environment devices".to_owned()));
            }
            let offset =
                parse_c_int(fields[1]).ok_or_else(|| err(line_no, format!("invalid offset {:?}", fields[1])))?;
            let hex = |idx: usize, what: &str| -> Result<Option<u64>, BootError> {
                fields
                    .get(idx)
                    .map(|f| parse_hex(f).ok_or_else(|| err(line_no, format!("invalid {what} {f:?}"))))
                    .transpose()
            };
            let env_size = hex(2, "environment size")?.unwrap_or(0);
            if env_size == 0 {
                return Err(err(line_no, "environment size is zero".to_owned()));
            }
            let env_size = usize::try_from(env_size)
                .map_err(|_| err(line_no, format!("environment size {env_size:#x} too large")))?;
            let sector_size = hex(3, "sector size")?;
            let sectors = hex(4, "sector count")?;
            let disable_lock = fields
                .get(5)
                .map(|f| f.parse::<i64>().map_err(|_| err(line_no, format!("invalid disablelock {f:?}"))))
                .transpose()?;
            devices.push(EnvDevice {
                path: PathBuf::from(fields[0]),
                offset,
                env_size,
                sector_size,
                sectors,
                disable_lock,
            });
        }
        match devices.as_slice() {
            [] => Err(err(0, "no environment device".to_owned())),
            [a, b] if a.env_size != b.env_size => {
                Err(err(0, format!("redundant copies differ in size ({:#x} and {:#x})", a.env_size, b.env_size)))
            }
            _ => Ok(Self { devices, flag_scheme: FlagScheme::default() }),
        }
    }

    /// Whether the environment has two copies.
    pub fn is_redundant(&self) -> bool {
        self.devices.len() == 2
    }

    /// Size of one copy in bytes.
    pub fn env_size(&self) -> usize {
        self.devices[0].env_size
    }
}

/// `strtoll(s, NULL, 0)` without trailing garbage: optional sign, `0x` hex, leading-0 octal,
/// else decimal.
fn parse_c_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<i64>().ok()?
    };
    if digits.starts_with(['+', '-']) {
        return None;
    }
    Some(if neg { -magnitude } else { magnitude })
}

/// `%zx`: hex with or without `0x`.
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    if digits.starts_with(['+', '-']) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_ints() {
        for (s, want) in [
            ("0", Some(0)),
            ("0x400000", Some(0x40_0000)),
            ("0X10", Some(16)),
            ("010", Some(8)),
            ("10", Some(10)),
            ("-0x4000", Some(-0x4000)),
            ("-16384", Some(-16384)),
            ("+12", Some(12)),
            ("08", None),
            ("0x", None),
            ("12k", None),
            ("--1", None),
            ("", None),
        ] {
            assert_eq!(parse_c_int(s), want, "{s:?}");
        }
        assert_eq!(parse_hex("4000"), Some(0x4000));
        assert_eq!(parse_hex("0x4000"), Some(0x4000));
        assert_eq!(parse_hex("20000"), Some(0x20000));
        assert_eq!(parse_hex("-1"), None);
    }

    #[test]
    fn single_file() {
        let c = FwEnvConfig::parse("# env on FAT\n\n/boot/uboot.env 0x0 0x4000\n").unwrap();
        assert!(!c.is_redundant());
        assert_eq!(c.env_size(), 0x4000);
        assert_eq!(
            c.devices[0],
            EnvDevice {
                path: "/boot/uboot.env".into(),
                offset: 0,
                env_size: 0x4000,
                sector_size: None,
                sectors: None,
                disable_lock: None,
            }
        );
    }

    #[test]
    fn redundant_raw_emmc_and_all_columns() {
        let text = "\
# device   offset    size   sector nsect disablelock
/dev/mmcblk0  0x400000  4000          # first copy
/dev/mmcblk0\t0x404000\t0x4000 0x200 0x20 1
";
        let c = FwEnvConfig::parse(text).unwrap();
        assert!(c.is_redundant());
        assert_eq!(c.devices[0].offset, 0x40_0000);
        assert_eq!(c.devices[0].env_size, 0x4000);
        assert_eq!(c.devices[1].offset, 0x40_4000);
        assert_eq!(c.devices[1].sector_size, Some(0x200));
        assert_eq!(c.devices[1].sectors, Some(0x20));
        assert_eq!(c.devices[1].disable_lock, Some(1));
        assert_eq!(c.flag_scheme, FlagScheme::Incremental);
    }

    #[test]
    fn negative_and_octal_offsets() {
        let c = FwEnvConfig::parse("/dev/sda -0x8000 0x4000\n/dev/sda 040000 4000\n").unwrap();
        assert_eq!(c.devices[0].offset, -0x8000);
        assert_eq!(c.devices[1].offset, 0o40000);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("", 0),
            ("# only comments\n", 0),
            ("/dev/x 0 0\n", 1),
            ("\n/dev/x zz 4000\n", 2),
            ("/dev/x 0 4000 g\n", 1),
            ("/dev/x 0\n", 1),
            ("/dev/x 0 4000\n/dev/x 4000 4000\n/dev/x 8000 4000\n", 3),
            ("/dev/x 0 4000\n/dev/y 0 2000\n", 0),
            ("/dev/x 0 4000 1 1 1 1\n", 1),
        ];
        for (text, line) in cases {
            match FwEnvConfig::parse(text) {
                Err(BootError::Config { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn load_reports_the_path() {
        let err = FwEnvConfig::load("/nonexistent/fw_env.config").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/fw_env.config"), "{err}");
    }
}
