//! Update bundles: a new edge binary, signed with Ed25519 by whoever releases it and checked by
//! the edge against its `update.public_key` before anything of it is installed.
//!
//! A bundle is a tar archive (ustar). Its first entry is `manifest.json` ([`Manifest`]: version,
//! architecture, and each file's name, size, mode and SHA-256), its second `manifest.sig`: the
//! base64 Ed25519 signature of `tapwatch-update-v1\0` followed by the manifest's bytes. Then each
//! file the manifest names, once, in any order, as a regular file of exactly its size. Nothing
//! else: a link, a directory, a name with a `/`, a file named twice or not named, a size or a
//! hash that differs, a manifest over [`MAX_MANIFEST`] bytes, is refused, each with its own
//! message. The signature is checked before any file is read, so nothing an unsigned bundle
//! holds is written anywhere.
//!
//! The release key is not the hub's: a hub that is broken into can send a tap a configuration,
//! never a program (`tapwatch-edge update keygen` makes one, kept offline).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::path::Path;

/// The manifest's entry name.
pub const MANIFEST: &str = "manifest.json";
/// The signature's entry name.
pub const SIGNATURE: &str = "manifest.sig";
/// The program a bundle must hold.
pub const BINARY: &str = "tapwatch-edge";
/// The manifest, at most.
pub const MAX_MANIFEST: u64 = 64 * 1024;
/// Files a bundle holds, at most.
pub const MAX_FILES: usize = 16;
/// This format.
pub const FORMAT: u32 = 1;

/// What a bundle holds, as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The release's version (what `tapwatch-edge --version` of it prints, or any label).
    pub version: String,
    /// The architecture it is built for, as Rust names it (`aarch64`, `x86_64`).
    pub arch: String,
    /// When it was made, Unix seconds.
    pub created: i64,
    pub files: Vec<FileEntry>,
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// A plain name (letters, digits, `.`, `_`, `-`; no `/`).
    pub name: String,
    pub size: u64,
    /// Permission bits, at most 0o755.
    pub mode: u32,
    /// Lower-case hex.
    pub sha256: String,
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    /// Every problem with its fields, or none.
    pub fn check(&self) -> Result<(), String> {
        let mut p = Vec::new();
        if self.format != FORMAT {
            p.push(format!("format {}: this edge reads format {FORMAT}", self.format));
        }
        if self.version.is_empty()
            || self.version.len() > 32
            || !self.version.bytes().all(|b| b.is_ascii_alphanumeric() || b".+~-_".contains(&b))
        {
            p.push(format!(
                "version {:?}: 1 to 32 letters, digits and . + ~ - _",
                self.version.chars().take(40).collect::<String>()
            ));
        }
        if !plain_name(&self.arch) {
            p.push("arch: not an architecture name".into());
        }
        if self.files.is_empty() || self.files.len() > MAX_FILES {
            p.push(format!("files: 1 to {MAX_FILES} (has {})", self.files.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            if !plain_name(&f.name) || f.name == MANIFEST || f.name == SIGNATURE {
                p.push(format!("file {:?}: not a plain file name", f.name));
            } else if !seen.insert(f.name.as_str()) {
                p.push(format!("file {}: named twice", f.name));
            }
            if f.mode & !0o755 != 0 {
                p.push(format!("file {}: mode {:o} (at most 755)", f.name, f.mode));
            }
            if !is_sha256(&f.sha256) {
                p.push(format!("file {}: sha256 is not 64 lower-case hex digits", f.name));
            }
        }
        if !self.files.iter().any(|f| f.name == BINARY) {
            p.push(format!("files: no {BINARY}"));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("; "))
        }
    }

    /// The bytes a bundle's size adds up to (its files).
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn signed_bytes(manifest: &[u8]) -> Vec<u8> {
    let mut v = b"tapwatch-update-v1\0".to_vec();
    v.extend_from_slice(manifest);
    v
}

/// Write a bundle of `files` (name, path) to `out`, signed with `key`.
pub fn pack(
    key: &ed25519_dalek::SigningKey,
    version: &str,
    arch: &str,
    created: i64,
    files: &[(String, &Path)],
    out: impl Write,
) -> Result<Manifest, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut entries = Vec::new();
    for (name, path) in files {
        let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mode = f.metadata().map_err(|e| format!("{}: {e}", path.display()))?.permissions();
        let mut hash = Sha256::new();
        let size = io::copy(&mut f, &mut hash).map_err(|e| format!("{}: {e}", path.display()))?;
        entries.push(FileEntry {
            name: name.clone(),
            size,
            mode: mode.mode() & 0o755,
            sha256: hex(&hash.finalize()),
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        version: version.into(),
        arch: arch.into(),
        created,
        files: entries,
    };
    manifest.check()?;
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    use ed25519_dalek::Signer as _;
    let sig =
        base64::engine::general_purpose::STANDARD.encode(key.sign(&signed_bytes(&text)).to_bytes());
    let mut tar = tar::Builder::new(out);
    let mut add = |name: &str, size: u64, mode: u32, data: &mut dyn Read| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(created.max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data).map_err(|e| format!("{name}: {e}"))
    };
    add(MANIFEST, text.len() as u64, 0o644, &mut text.as_slice())?;
    add(SIGNATURE, sig.len() as u64, 0o644, &mut sig.as_bytes())?;
    for ((_, path), f) in files.iter().zip(&manifest.files) {
        let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        add(&f.name, f.size, f.mode, &mut file)?;
    }
    tar.into_inner().and_then(|mut w| w.flush()).map_err(|e| e.to_string())?;
    Ok(manifest)
}

/// Why a bundle was refused.
#[derive(Debug)]
pub enum BundleError {
    /// Not a bundle, or one that breaks the format (the message names what).
    Format(String),
    /// Its signature is missing or not the release key's.
    Signature(String),
    /// Built for another machine.
    Arch { bundle: String, here: String },
    /// Reading it or writing a file failed.
    Io(String),
}

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BundleError::Format(m) => write!(f, "not a valid update bundle: {m}"),
            BundleError::Signature(m) => write!(f, "update bundle refused: {m}"),
            BundleError::Arch { bundle, here } => {
                write!(f, "update bundle refused: built for {bundle}, this edge is {here}")
            }
            BundleError::Io(m) => write!(f, "update bundle: {m}"),
        }
    }
}

impl std::error::Error for BundleError {}

fn format_err(m: impl Into<String>) -> BundleError {
    BundleError::Format(m.into())
}

/// Where [`read`] hands each file: its entry and a reader of exactly its bytes.
pub type Sink<'a> = dyn FnMut(&FileEntry, &mut dyn Read) -> io::Result<()> + 'a;

/// Read a bundle: its manifest, checked against `public_key` (base64; `None`: the signature is
/// not checked, for a hub that only keeps bundles), then each file, hashed, handed to `sink`
/// (name, reader of exactly its bytes) when given. The manifest is returned only when every
/// file was there, whole, with its hash. `arch`: the architecture it must be built for.
pub fn read(
    input: impl Read,
    public_key: Option<&str>,
    arch: Option<&str>,
    mut sink: Option<&mut Sink<'_>>,
) -> Result<Manifest, BundleError> {
    let mut archive = tar::Archive::new(input);
    let mut entries = archive.entries().map_err(|e| format_err(format!("not a tar file: {e}")))?;
    let mut next = |what: &str| {
        entries
            .next()
            .ok_or_else(|| format_err(format!("it ends before {what}")))?
            // tar's message quotes the bytes it read: not echoed back.
            .map_err(|_| format_err(format!("not a tar archive, or cut short, before {what}")))
    };
    let small = |e: &mut tar::Entry<'_, _>, name: &str| -> Result<Vec<u8>, BundleError> {
        let path = e.path().map_err(|e| format_err(e.to_string()))?.to_string_lossy().into_owned();
        if path != name {
            return Err(format_err(format!("its entry is {path:?} where {name} must be")));
        }
        if e.header().entry_type() != tar::EntryType::Regular || e.size() > MAX_MANIFEST {
            return Err(format_err(format!(
                "{name} is not a file of at most {MAX_MANIFEST} bytes"
            )));
        }
        let mut v = Vec::new();
        e.read_to_end(&mut v).map_err(|err| format_err(format!("{name}: {err}")))?;
        Ok(v)
    };
    let text = small(&mut next(MANIFEST)?, MANIFEST)?;
    let sig = small(&mut next(SIGNATURE)?, SIGNATURE)?;
    if let Some(key) = public_key {
        verify(key, &text, &sig)?;
    }
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| format_err(format!("{MANIFEST}: {e}")))?;
    manifest.check().map_err(|e| format_err(format!("{MANIFEST}: {e}")))?;
    if let Some(here) = arch {
        if manifest.arch != here {
            return Err(BundleError::Arch { bundle: manifest.arch.clone(), here: here.into() });
        }
    }
    let mut seen = vec![false; manifest.files.len()];
    for entry in entries {
        let mut e =
            entry.map_err(|_| format_err("not a tar archive, or cut short, after its manifest"))?;
        let path = e.path().map_err(|e| format_err(e.to_string()))?.to_string_lossy().into_owned();
        let Some(i) = manifest.files.iter().position(|f| f.name == path) else {
            return Err(format_err(format!("it holds {path:?}, which its manifest does not name")));
        };
        let f = &manifest.files[i];
        if std::mem::replace(&mut seen[i], true) {
            return Err(format_err(format!("it holds {path} twice")));
        }
        if e.header().entry_type() != tar::EntryType::Regular {
            return Err(format_err(format!("{path} is not a regular file")));
        }
        if e.size() != f.size {
            return Err(format_err(format!(
                "{path} is {} bytes, its manifest says {}",
                e.size(),
                f.size
            )));
        }
        let mut hashing = Hashing { inner: &mut e, hash: Sha256::new(), read: 0 };
        match sink.as_mut() {
            Some(sink) => {
                sink(f, &mut hashing).map_err(|e| BundleError::Io(format!("{path}: {e}")))?
            }
            None => {
                io::copy(&mut hashing, &mut io::sink())
                    .map_err(|e| BundleError::Io(format!("{path}: {e}")))?;
            }
        }
        // Whatever the sink left unread counts too.
        io::copy(&mut hashing, &mut io::sink())
            .map_err(|e| BundleError::Io(format!("{path}: {e}")))?;
        if hashing.read != f.size {
            return Err(format_err(format!("{path} is cut short")));
        }
        if hex(&hashing.hash.finalize()) != f.sha256 {
            return Err(format_err(format!("{path}: its SHA-256 is not the manifest's")));
        }
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(format_err(format!("it lacks {}", manifest.files[i].name)));
    }
    Ok(manifest)
}

fn verify(public_key: &str, manifest: &[u8], sig: &[u8]) -> Result<(), BundleError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key: [u8; 32] =
        b64.decode(public_key.trim()).ok().and_then(|k| k.try_into().ok()).ok_or_else(|| {
            BundleError::Signature("update.public_key is not 32 bytes of base64".into())
        })?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|e| BundleError::Signature(format!("update.public_key: {e}")))?;
    let sig: [u8; 64] = b64
        .decode(String::from_utf8_lossy(sig).trim())
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| BundleError::Signature("its signature is not 64 bytes of base64".into()))?;
    key.verify_strict(&signed_bytes(manifest), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| BundleError::Signature("its signature is not the release key's".into()))
}

struct Hashing<'a, R: Read> {
    inner: &'a mut R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    fn public(seed: u8) -> String {
        crate::fleet::public_key_text(&key(seed))
    }

    fn bundle(dir: &Path, seed: u8, version: &str) -> Vec<u8> {
        let bin = dir.join("tapwatch-edge");
        std::fs::write(&bin, b"\x7fELF pretend program").unwrap();
        let mut out = Vec::new();
        pack(&key(seed), version, "x86_64", 1, &[(BINARY.into(), &bin)], &mut out).unwrap();
        out
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tapwatch-bundle-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::create_dir_all(&d);
        d
    }

    #[test]
    fn test_a_signed_bundle_reads_back_with_its_files() {
        let b = bundle(&dir(), 1, "1.2.3");
        let mut got = Vec::new();
        let mut sink = |f: &FileEntry, r: &mut dyn Read| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)?;
            got.push((f.name.clone(), v));
            Ok(())
        };
        let m = read(b.as_slice(), Some(&public(1)), Some("x86_64"), Some(&mut sink))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.version, "1.2.3");
        assert_eq!(got, vec![("tapwatch-edge".to_string(), b"\x7fELF pretend program".to_vec())]);
    }

    #[test]
    fn test_another_key_a_changed_byte_or_another_arch_is_refused() {
        let b = bundle(&dir(), 1, "1.2.3");
        let e = read(b.as_slice(), Some(&public(2)), None, None).map(|_| ());
        assert!(matches!(e, Err(BundleError::Signature(_))), "{e:?}");
        let e = read(b.as_slice(), Some(&public(1)), Some("aarch64"), None).map(|_| ());
        assert!(matches!(e, Err(BundleError::Arch { .. })), "{e:?}");
        // The program's bytes changed after signing: its hash no longer matches.
        let at = b.windows(7).position(|w| w == b"pretend").unwrap();
        let mut bad = b.clone();
        bad[at] ^= 1;
        let e = read(bad.as_slice(), Some(&public(1)), None, None).map_err(|e| e.to_string());
        assert!(e.as_ref().is_err_and(|m| m.contains("SHA-256")), "{e:?}");
        // The manifest changed after signing.
        let at = b.windows(5).position(|w| w == b"1.2.3").unwrap();
        let mut bad = b.clone();
        bad[at] = b'9';
        let e = read(bad.as_slice(), Some(&public(1)), None, None).map(|_| ());
        assert!(matches!(e, Err(BundleError::Signature(_))), "{e:?}");
    }

    #[test]
    fn test_garbage_truncation_and_extra_files_are_refused_without_panic() {
        let b = bundle(&dir(), 1, "1.2.3");
        // (Without its two zero blocks at the end it is whole: every file is there.)
        for n in [0, 10, 511, 512, 1024, 1536, b.len() / 2, b.len() - 1024 - 500] {
            assert!(read(&b[..n], Some(&public(1)), None, None).is_err(), "cut at {n}");
        }
        assert!(read(&b"not a tar file at all"[..], None, None, None).is_err());
        // A file the manifest does not name, appended.
        let mut tar = tar::Builder::new(Vec::new());
        let mut archive = tar::Archive::new(b.as_slice());
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header().clone();
            tar.append(&h, e).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        tar.append_data(&mut h, "extra", &b"abc"[..]).unwrap();
        let extra = tar.into_inner().unwrap();
        let e = read(extra.as_slice(), Some(&public(1)), None, None).map_err(|e| e.to_string());
        assert!(e.as_ref().is_err_and(|m| m.contains("\"extra\"")), "{e:?}");
    }

    #[test]
    fn test_any_byte_changed_is_refused_or_reads_the_same_files() {
        let b = bundle(&dir(), 1, "1.2.3");
        let good = read(b.as_slice(), Some(&public(1)), None, None).unwrap();
        for i in 0..b.len() {
            for flip in [0x01, 0xff].into_iter().take(if i % 7 == 0 { 2 } else { 1 }) {
                let mut bad = b.clone();
                bad[i] ^= flip;
                let mut sink =
                    |_: &FileEntry, r: &mut dyn Read| r.read_to_end(&mut Vec::new()).map(|_| ());
                if let Ok(m) = read(bad.as_slice(), Some(&public(1)), None, Some(&mut sink)) {
                    // Only bytes nothing is read from (header fields tar ignores, padding).
                    assert_eq!(m, good, "byte {i} ^ {flip:#x}");
                }
            }
        }
    }

    #[test]
    fn test_a_manifest_with_bad_fields_names_each() {
        let m = Manifest {
            format: 2,
            version: "1 2".into(),
            arch: "x/y".into(),
            created: 0,
            files: vec![FileEntry {
                name: "../etc/passwd".into(),
                size: 1,
                mode: 0o4755,
                sha256: "x".into(),
            }],
        };
        let e = m.check().unwrap_err();
        for part in [
            "format 2",
            "version",
            "arch",
            "not a plain file name",
            "mode",
            "sha256",
            "no tapwatch-edge",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
    }
}
