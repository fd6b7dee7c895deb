//! A configuration file as read: its text, its directory (relative paths resolve against
//! it), and the helpers that turn a problem into an error naming the file, the line and
//! the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

use consent_cache::Bin;

use super::{bounds, locate, ConfigError, FileConfig};

/// A parsed file with what is needed to point at lines in it.
pub struct Source {
    /// The file as given.
    pub path: PathBuf,
    /// Its directory, against which relative paths in it are resolved.
    pub dir: PathBuf,
    text: String,
}

impl Source {
    /// Reads a configuration file.
    pub fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Source {
            path: path.to_path_buf(),
            dir,
            text,
        })
    }

    /// Parses the text strictly. An error names the dotted path of the value it is about
    /// (`providers[1].timeout_ms`, not only `timeout_ms`) and, inside an entry of an array
    /// of tables, the entry's `bin`.
    pub fn parse(&self) -> Result<FileConfig, ConfigError> {
        toml::from_str::<FileConfig>(&self.text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let line = self.line_of(offset);
            // A span over the whole document (a missing top-level section) is about no
            // value in particular.
            let located = e
                .span()
                .filter(|s| !(s.start == 0 && s.end >= self.text.len()))
                .and_then(|_| locate::path_at(&self.text, offset));
            let (field, message) = match located {
                Some(path) => {
                    let mut message = e.message().trim().to_string();
                    if let Some(r) = bounds::range_of(&path) {
                        message = format!("{message} ({})", r.describe());
                    }
                    if let Some(bin) = locate::entry_bin(&self.text, &path) {
                        message = format!("{message}, in the entry with bin = {bin:?}");
                    }
                    (path, message)
                }
                None => (
                    self.key_on_line(line).unwrap_or_else(|| "-".to_string()),
                    e.message().trim().to_string(),
                ),
            };
            ConfigError::Invalid {
                file: self.path.clone(),
                line,
                field,
                message,
            }
        })
    }

    /// The 1-based line where `field` (a dotted path such as `providers[1].timeout_ms`)
    /// is written; else where its nearest written parent is (the entry's `[[providers]]`
    /// header, the `[server]` header); 0 when nothing of it is in the file.
    pub fn line_of_field(&self, field: &str) -> usize {
        locate::find(&self.text, field).map_or(0, |(o, _)| self.line_of(o))
    }

    /// The 1-based line where `field` itself is written, if it is.
    fn line_of_exact_field(&self, field: &str) -> Option<usize> {
        locate::find(&self.text, field)
            .filter(|(_, exact)| *exact)
            .map(|(o, _)| self.line_of(o))
    }

    /// 1-based line number of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn key_on_line(&self, line: usize) -> Option<String> {
        let l = self.text.lines().nth(line.checked_sub(1)?)?;
        let key = l.split('=').next()?.trim();
        if key.is_empty() {
            None
        } else {
            Some(key.trim_matches(|c| c == '[' || c == ']').to_string())
        }
    }

    /// An error about `field`, at the line where the field is written, else at the
    /// spanned value `at` (an entry's `bin`, a section's URL) when that has a position,
    /// else where the field's nearest written parent is.
    pub fn invalid<T>(
        &self,
        at: &Spanned<T>,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let span = at.span();
        let line = match self.line_of_exact_field(field) {
            Some(line) => line,
            None if span.end > 0 => self.line_of(span.start),
            None => self.line_of_field(field),
        };
        ConfigError::Invalid {
            file: self.path.clone(),
            line,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// An error at the first line that starts with `line_start` (a table header such as
    /// `[limits.store]`, or a key), else where `field` is written, else at no line.
    pub fn invalid_at(
        &self,
        line_start: &str,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let line = self
            .text
            .lines()
            .position(|l| l.trim_start().starts_with(line_start))
            .map_or_else(|| self.line_of_field(field), |i| i + 1);
        ConfigError::Invalid {
            file: self.path.clone(),
            line,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// An error about `field`, at the line where it (or its nearest written parent) is
    /// written; at no line (0) only when nothing of it is in the file (a missing section).
    pub fn invalid_here(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.path.clone(),
            line: self.line_of_field(field),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Resolves a configured path against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Reads a file named by a spanned path, with the error pointing at the value.
    pub fn read_bytes(&self, p: &Spanned<PathBuf>, field: &str) -> Result<Vec<u8>, ConfigError> {
        let full = self.resolve(p.get_ref());
        std::fs::read(&full)
            .map_err(|e| self.invalid(p, field, format!("cannot read {}: {e}", full.display())))
    }

    /// Reads every file of a PEM list (`ca = [..]`, `client_ca = [..]`), each checked to
    /// hold at least one certificate; errors name the entry (`field[i]`). An empty list
    /// is refused with `empty`.
    pub fn pem_list(
        &self,
        files: &[Spanned<PathBuf>],
        field: &str,
        empty: &str,
    ) -> Result<Vec<Vec<u8>>, ConfigError> {
        if files.is_empty() {
            return Err(self.invalid_here(field, empty));
        }
        let mut pems = Vec::with_capacity(files.len());
        for (i, p) in files.iter().enumerate() {
            let entry = format!("{field}[{i}]");
            let pem = self.read_bytes(p, &entry)?;
            crate::tls::certs_from_pem(&pem).map_err(|e| self.invalid(p, &entry, e.to_string()))?;
            pems.push(pem);
        }
        Ok(pems)
    }

    /// Parses a spanned BIN.
    pub fn bin(&self, s: &Spanned<String>, field: &str) -> Result<Bin, ConfigError> {
        Bin::parse(s.get_ref()).map_err(|e| self.invalid(s, field, e.to_string()))
    }

    /// Parses a spanned socket address.
    pub fn socket_addr(&self, s: &Spanned<String>, field: &str) -> Result<SocketAddr, ConfigError> {
        s.get_ref()
            .parse()
            .map_err(|e| self.invalid(s, field, format!("not an ip:port address: {e}")))
    }
}
