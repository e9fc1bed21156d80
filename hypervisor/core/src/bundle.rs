//! The boot bundle: a ustar archive, loaded by the bootloader as its ramdisk, that carries
//! `bastion.toml` and the guest images it names.
//!
//! Parsing is done by `tar-no-std`, which validates the block layout and every header
//! checksum up front, so a truncated or damaged bundle is refused before any file is used.
//! This module adds what a hypervisor needs on top: file lookup by name, refusal of
//! duplicate names (two different files under one name would make "which one runs" a guess),
//! and errors that say what is wrong in words.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use tar_no_std::{CorruptDataError, TarArchiveRef};

/// The configuration file every bundle must carry at its top level.
pub const CONFIG_FILE: &str = "bastion.toml";

/// Why a bundle cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleError {
    /// The bootloader passed no ramdisk at all.
    Missing,
    /// The archive structure is damaged (bad checksum, truncated, no terminator, ...).
    Corrupt(CorruptDataError),
    /// A file name is not valid UTF-8.
    BadName { index: usize },
    /// Two entries have the same name.
    Duplicate(String),
    /// A file the caller needs is not in the bundle.
    MissingFile(String),
    /// A text file is not valid UTF-8.
    NotUtf8(String),
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::Missing => write!(f, "no boot bundle: the bootloader passed no ramdisk (build the image with `boot` or `cargo xtask build`)"),
            BundleError::Corrupt(e) => write!(f, "boot bundle is corrupt: {e}"),
            BundleError::BadName { index } => write!(f, "boot bundle entry #{index} has a name that is not UTF-8"),
            BundleError::Duplicate(n) => write!(f, "boot bundle holds `{n}` twice"),
            BundleError::MissingFile(n) => write!(f, "boot bundle has no file `{n}`"),
            BundleError::NotUtf8(n) => write!(f, "boot bundle file `{n}` is not valid UTF-8 text"),
        }
    }
}

/// One file in the bundle.
#[derive(Debug, Clone, Copy)]
pub struct BundleFile<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// A validated bundle. File names are normalised: a leading `./` is dropped.
pub struct Bundle<'a> {
    files: Vec<(String, &'a [u8])>,
}

impl<'a> Bundle<'a> {
    /// Validates `data` as a bundle. An empty slice means the ramdisk was missing.
    pub fn parse(data: &'a [u8]) -> Result<Self, BundleError> {
        if data.is_empty() {
            return Err(BundleError::Missing);
        }
        let archive = TarArchiveRef::new(data).map_err(BundleError::Corrupt)?;
        let mut files: Vec<(String, &'a [u8])> = Vec::new();
        for (index, entry) in archive.entries().enumerate() {
            let name = entry.filename();
            let name = name.as_str().map_err(|_| BundleError::BadName { index })?;
            let name = name.strip_prefix("./").unwrap_or(name).to_string();
            if files.iter().any(|(n, _)| *n == name) {
                return Err(BundleError::Duplicate(name));
            }
            files.push((name, entry.data()));
        }
        Ok(Bundle { files })
    }

    /// All files, in archive order.
    pub fn files(&self) -> impl Iterator<Item = BundleFile<'_>> {
        self.files.iter().map(|(n, d)| BundleFile { name: n.as_str(), data: d })
    }

    /// The contents of `name`.
    pub fn file(&self, name: &str) -> Result<&'a [u8], BundleError> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| *d)
            .ok_or_else(|| BundleError::MissingFile(name.to_string()))
    }

    /// The contents of `name` as UTF-8 text.
    pub fn text(&self, name: &str) -> Result<&'a str, BundleError> {
        core::str::from_utf8(self.file(name)?).map_err(|_| BundleError::NotUtf8(name.to_string()))
    }

    /// The configuration text (`bastion.toml`).
    pub fn config_text(&self) -> Result<&'a str, BundleError> {
        self.text(CONFIG_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a ustar archive with the host `tar` crate, as `boot` does.
    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn reads_files_by_name() {
        let data = tar_of(&[("bastion.toml", b"[hypervisor]\n"), ("guests/a.bin", &[1, 2, 3])]);
        let b = Bundle::parse(&data).unwrap();
        assert_eq!(b.config_text().unwrap(), "[hypervisor]\n");
        assert_eq!(b.file("guests/a.bin").unwrap(), &[1, 2, 3]);
        let names: Vec<_> = b.files().map(|f| f.name).collect();
        assert_eq!(names, ["bastion.toml", "guests/a.bin"]);
    }

    #[test]
    fn dot_slash_names_are_normalised() {
        let data = tar_of(&[("./bastion.toml", b"x = 1\n")]);
        assert_eq!(Bundle::parse(&data).unwrap().config_text().unwrap(), "x = 1\n");
    }

    #[test]
    fn missing_bundle_and_missing_file_are_named() {
        assert_eq!(Bundle::parse(&[]).err(), Some(BundleError::Missing));
        let data = tar_of(&[("other", b"")]);
        let b = Bundle::parse(&data).unwrap();
        let e = b.config_text().unwrap_err();
        assert_eq!(e, BundleError::MissingFile("bastion.toml".into()));
        assert_eq!(e.to_string(), "boot bundle has no file `bastion.toml`");
    }

    #[test]
    fn damaged_header_is_refused_with_a_reason() {
        let mut data = tar_of(&[("bastion.toml", b"a = 1\n")]);
        data[3] ^= 0x55; // inside the first header's name: its checksum no longer matches
        let e = Bundle::parse(&data).err().expect("corrupt bundle must be refused");
        assert!(matches!(e, BundleError::Corrupt(CorruptDataError::InvalidChecksum { block_index: 0 })), "{e:?}");
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_bundles_are_refused() {
        let data = tar_of(&[("bastion.toml", &[b'x'; 2000])]);
        // Cut inside the payload: the size in the header runs past the end.
        assert!(matches!(Bundle::parse(&data[..1024]), Err(BundleError::Corrupt(_))));
        // Not a multiple of the block size.
        assert!(matches!(Bundle::parse(&data[..700]), Err(BundleError::Corrupt(_))));
        // Random bytes.
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        assert!(matches!(Bundle::parse(&garbage), Err(BundleError::Corrupt(_))));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let data = tar_of(&[("bastion.toml", b"a"), ("./bastion.toml", b"b")]);
        assert_eq!(Bundle::parse(&data).err(), Some(BundleError::Duplicate("bastion.toml".into())));
    }

    #[test]
    fn non_utf8_text_is_refused() {
        let data = tar_of(&[("bastion.toml", &[0xff, 0xfe])]);
        let b = Bundle::parse(&data).unwrap();
        assert_eq!(b.config_text(), Err(BundleError::NotUtf8("bastion.toml".into())));
    }
}
