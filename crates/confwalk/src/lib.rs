//! The strict config walker shared by `neoflixd.toml` (`neoflix-config`) and
//! `neoflix-ingest.toml` (`neoflix-ingest`).
//!
//! A [`Walker`] reads a file's spanned TOML tree option by option: each getter takes one known
//! option (with its type, range or choices, and its default), and [`Walker::finish`] reports every
//! option of a section that nobody took. Nothing stops at the first problem: every one is
//! collected as a [`Problem`] naming the file, the line and the dotted option, and
//! [`Walker::into_result`] refuses the file with all of them at once ([`ConfigError::Invalid`],
//! which shows the first screenful). Values from the file are quoted cut and escaped
//! ([`shown`]), so a long or hostile value cannot flood or forge the output.
//!
//! Options with a fixed set of values are enums declared with [`choice!`]: the names are written
//! once, and a wrong value is reported with every accepted one.
//!
//! This crate knows TOML and nothing of either program, so `neoflix-ingest` can use it without
//! linking what `neoflixd`'s config needs (the sealing crate, evdev).
//!
//! ```
//! use neoflix_confwalk::Walker;
//! let text = "[server]\nport = 99999\ncolour = true\n";
//! let mut w = Walker::new("x.toml", text);
//! let root = w.parse(text).unwrap();
//! let top = w.root(&root);
//! let mut server = w.section(&root, "server");
//! let (port, _) = w.int(&mut server, "port", 8443, (1, 65535), "");
//! w.finish(server);
//! w.finish(top);
//! let err = w.into_result().unwrap_err().to_string();
//! assert_eq!(port, 8443); // the default stands in while the problems are collected
//! assert!(err.starts_with("2 errors in x.toml:"));
//! assert!(err.contains("x.toml:2: server.port: 99999 is out of range: allowed 1 to 65535"));
//! assert!(err.contains("x.toml:3: server.colour: unknown option"));
//! ```
#![deny(missing_docs)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use thiserror::Error;
pub use toml::Spanned;
pub use toml::de::{DeTable, DeValue};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file as named by the caller.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The option, dotted (`capture.fps`), or empty for a syntax error.
    pub option: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.option.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file, self.line, self.option, self.message
            )
        }
    }
}

/// Why a config was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read: typically a wrong path, missing permissions, or a path that
    /// is not a config file at all (a device, a FIFO, something far too large).
    #[error(transparent)]
    Read(#[from] neoflix_logging::SmallFileError),
    /// The file has problems; all of them are counted, the first screenful listed.
    #[error("{}", report(file, problems))]
    Invalid {
        /// The file name as given.
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// The largest config file read: the documented examples are a few KiB; anything near this is
/// the wrong file, and reading it whole must not be able to exhaust memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a config file: a regular UTF-8 file of at most [`MAX_CONFIG_BYTES`].
pub fn read(path: &Path) -> Result<String, ConfigError> {
    Ok(neoflix_logging::read_small_file(path, MAX_CONFIG_BYTES)?)
}

/// Problems listed in full; the rest are counted. A screenful: more would scroll the first (and
/// usually the cause of the others) out of sight.
pub const SHOWN_PROBLEMS: usize = 20;

/// `N errors in FILE:` and the first [`SHOWN_PROBLEMS`] problems, one per line.
pub fn report(file: &str, problems: &[Problem]) -> String {
    let mut out = if problems.len() == 1 {
        format!("1 error in {file}:")
    } else {
        format!("{} errors in {file}:", problems.len())
    };
    for p in problems.iter().take(SHOWN_PROBLEMS) {
        out.push_str(&format!("\n  {p}"));
    }
    if problems.len() > SHOWN_PROBLEMS {
        out.push_str(&format!(
            "\n  ... and {} more: fix these first",
            problems.len() - SHOWN_PROBLEMS
        ));
    }
    out
}

/// An option whose value is one of a fixed set of names; declared with [`choice!`].
pub trait Choice: std::str::FromStr<Err = UnknownChoice> + Copy {
    /// Every accepted name, in the documented order.
    const NAMES: &'static [&'static str];
}

/// A value that is none of an option's names.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{} is not one of: {}", shown(value), allowed.join(", "))]
pub struct UnknownChoice {
    /// The value as written.
    pub value: String,
    /// The accepted names.
    pub allowed: &'static [&'static str],
}

/// Declares an option with a fixed set of values: the enum, its names as written in the file
/// (one list, so the parser, the error message and the docs cannot disagree), `as_str`,
/// `FromStr`, `Display` and [`Choice`].
///
/// ```
/// neoflix_confwalk::choice! {
///     /// `capture.source`
///     pub enum Source {
///         /// The test pattern.
///         Test = "test",
///         /// A V4L2 camera.
///         V4l2 = "v4l2",
///     }
/// }
/// assert_eq!("v4l2".parse::<Source>(), Ok(Source::V4l2));
/// assert_eq!(Source::Test.to_string(), "test");
/// let e = "usb".parse::<Source>().unwrap_err();
/// assert_eq!(e.to_string(), "'usb' is not one of: test, v4l2");
/// ```
#[macro_export]
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value as written in the config, in the documented order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The value as written in the config.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::UnknownChoice;

            fn from_str(s: &str) -> ::std::result::Result<Self, $crate::UnknownChoice> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    _ => Err($crate::UnknownChoice {
                        value: s.to_string(),
                        allowed: Self::NAMES,
                    }),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::Choice for $name {
            const NAMES: &'static [&'static str] = $name::NAMES;
        }
    };
}

/// Reads one file's options and collects its problems.
pub struct Walker {
    file: String,
    /// Offsets of the text's newlines, so a line number is a binary search, not a scan from the
    /// start for each problem (which made 40 000 problems take seconds).
    newlines: Vec<usize>,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// The sections asked for, in order: taken from the top level by [`Walker::finish`] and
    /// named in its hint for an unknown section.
    sections: Vec<&'static str>,
    /// Where the options are documented, for the hint on an unknown one.
    docs: &'static str,
}

/// A table being read, with the keys taken so far.
pub struct Section<'a, 'i> {
    name: &'static str,
    table: Option<&'a DeTable<'i>>,
    line: usize,
    taken: HashSet<String>,
}

impl Section<'_, '_> {
    /// The section's name; empty for the top level.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The line of the section's header (1 when it is absent): where a missing option of it is
    /// reported.
    pub fn line(&self) -> usize {
        self.line
    }

    /// Whether the file sets `key` in this section.
    pub fn has(&self, key: &str) -> bool {
        self.table.is_some_and(|t| t.get(key).is_some())
    }
}

impl Walker {
    /// A walker for `text`; `file` names it in every problem.
    pub fn new(file: &str, text: &str) -> Walker {
        Walker {
            file: file.to_string(),
            newlines: text
                .bytes()
                .enumerate()
                .filter_map(|(i, b)| (b == b'\n').then_some(i))
                .collect(),
            errors: Vec::new(),
            warnings: Vec::new(),
            sections: Vec::new(),
            docs: "the documentation",
        }
    }

    /// Names the document that lists the options (`docs/config.md`) in the hint on an unknown
    /// option.
    pub fn documented_in(mut self, docs: &'static str) -> Walker {
        self.docs = docs;
        self
    }

    /// Parses the text given to [`Walker::new`]; a syntax error is recorded (its line, the
    /// parser's message cut to a line and escaped) and gives `None`.
    pub fn parse<'i>(&mut self, text: &'i str) -> Option<DeTable<'i>> {
        match DeTable::parse(text) {
            Ok(t) => Some(t.into_inner()),
            Err(e) => {
                let line = e.span().map(|s| self.line_of(s.start)).unwrap_or(1);
                let msg = e.message().trim().to_string();
                // The parser quotes the file; keep that to a line, escaped.
                let msg = cut(&msg, 200).escape_debug().to_string();
                self.error(line, "", format!("TOML syntax error: {msg}"));
                None
            }
        }
    }

    /// The 1-based line of a byte offset in the text.
    pub fn line_of(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&nl| nl < offset) + 1
    }

    /// Records an error.
    pub fn error(&mut self, line: usize, option: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem {
            file: self.file.clone(),
            line,
            option: option.into(),
            message: message.into(),
        });
    }

    /// Records a warning: valid, but probably not what was meant.
    pub fn warn(&mut self, line: usize, option: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem {
            file: self.file.clone(),
            line,
            option: option.into(),
            message: message.into(),
        });
    }

    /// Whether an error was recorded so far.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The top level of the file, as a section.
    pub fn root<'a, 'i>(&self, root: &'a DeTable<'i>) -> Section<'a, 'i> {
        Section {
            name: "",
            table: Some(root),
            line: 1,
            taken: HashSet::new(),
        }
    }

    /// The section `[name]`; absent, it is empty (every option takes its default).
    pub fn section<'a, 'i>(
        &mut self,
        root: &'a DeTable<'i>,
        name: &'static str,
    ) -> Section<'a, 'i> {
        self.sections.push(name);
        let mut s = Section {
            name,
            table: None,
            line: 1,
            taken: HashSet::new(),
        };
        if let Some(v) = root.get(name) {
            s.line = self.line_of(v.span().start);
            match v.get_ref() {
                DeValue::Table(t) => s.table = Some(t),
                other => self.error(
                    s.line,
                    name,
                    format!("expected a table [{name}], found {}", type_name(other)),
                ),
            }
        }
        s
    }

    /// The section `[name]` if the file has it.
    pub fn optional_section<'a, 'i>(
        &mut self,
        root: &'a DeTable<'i>,
        name: &'static str,
    ) -> Option<Section<'a, 'i>> {
        if root.get(name).is_none() {
            self.sections.push(name);
            return None;
        }
        Some(self.section(root, name))
    }

    /// The dotted name; a key from the file (an unknown one can be anything) is cut and
    /// escaped like a value.
    pub fn option_name(section: &Section, key: &str) -> String {
        let key = cut(key, 60).escape_debug().to_string();
        if section.name.is_empty() {
            key
        } else {
            format!("{}.{key}", section.name)
        }
    }

    /// Takes `key`: its value, line and dotted name, if the file sets it.
    pub fn value<'a, 'i>(
        &mut self,
        s: &mut Section<'a, 'i>,
        key: &str,
    ) -> Option<(&'a Spanned<DeValue<'i>>, usize, String)> {
        s.taken.insert(key.to_string());
        let v = s.table?.get(key)?;
        let line = self.line_of(v.span().start);
        Some((v, line, Self::option_name(s, key)))
    }

    /// A string, or `default`; and its line (the section's when absent).
    pub fn string(&mut self, s: &mut Section, key: &str, default: &str) -> (String, usize) {
        match self.value(s, key) {
            None => (default.to_string(), s.line),
            Some((v, line, opt)) => match v.get_ref() {
                DeValue::String(st) => (st.to_string(), line),
                other => {
                    self.error(
                        line,
                        opt,
                        format!("expected a string, found {}", type_name(other)),
                    );
                    (default.to_string(), line)
                }
            },
        }
    }

    /// One string, or an array of 1 to `max` strings; empty when absent (or wrong, which is
    /// reported); and the line.
    pub fn strings(&mut self, s: &mut Section, key: &str, max: usize) -> (Vec<String>, usize) {
        let Some((v, line, opt)) = self.value(s, key) else {
            return (Vec::new(), s.line);
        };
        match v.get_ref() {
            DeValue::String(st) => (vec![st.to_string()], line),
            DeValue::Array(items) if items.is_empty() || items.len() > max => {
                self.error(
                    line,
                    opt,
                    format!("expected 1 to {max} strings, found {}", items.len()),
                );
                (Vec::new(), line)
            }
            DeValue::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(st) => out.push(st.to_string()),
                        other => {
                            self.error(
                                self.line_of(item.span().start),
                                opt.clone(),
                                format!(
                                    "expected a string in the array, found {}",
                                    type_name(other)
                                ),
                            );
                            return (Vec::new(), line);
                        }
                    }
                }
                (out, line)
            }
            other => {
                self.error(
                    line,
                    opt,
                    format!(
                        "expected a string or an array of strings, found {}",
                        type_name(other)
                    ),
                );
                (Vec::new(), line)
            }
        }
    }

    /// A string that must be set and not empty: otherwise `missing: {hint}` (say what to put
    /// there) and `None`.
    pub fn required_string(
        &mut self,
        s: &mut Section,
        key: &str,
        hint: &str,
    ) -> Option<(String, usize)> {
        let before = self.errors.len();
        let (v, line) = self.string(s, key, "");
        if v.is_empty() {
            // A value of the wrong type was reported already.
            if self.errors.len() == before {
                self.error(line, Self::option_name(s, key), format!("missing: {hint}"));
            }
            return None;
        }
        Some((v, line))
    }

    /// A whole number within `range` (inclusive), or `default`; `unit` (" seconds") is named in
    /// messages.
    pub fn int(
        &mut self,
        s: &mut Section,
        key: &str,
        default: u64,
        range: (u64, u64),
        unit: &str,
    ) -> (u64, usize) {
        let Some((v, line, opt)) = self.value(s, key) else {
            return (default, s.line);
        };
        let DeValue::Integer(i) = v.get_ref() else {
            self.error(
                line,
                opt,
                format!(
                    "expected a whole number{unit}, found {}",
                    type_name(v.get_ref())
                ),
            );
            return (default, line);
        };
        let digits = i.as_str().replace('_', "");
        match i128::from_str_radix(&digits, i.radix()) {
            Ok(n) if n >= range.0 as i128 && n <= range.1 as i128 => (n as u64, line),
            Ok(n) => {
                self.error(
                    line,
                    opt,
                    format!(
                        "{n} is out of range: allowed {} to {}{unit}",
                        range.0, range.1
                    ),
                );
                (default, line)
            }
            Err(_) => {
                self.error(
                    line,
                    opt,
                    format!("{} is not a valid number", shown(i.as_str())),
                );
                (default, line)
            }
        }
    }

    /// `true` or `false`, or `default`.
    pub fn boolean(&mut self, s: &mut Section, key: &str, default: bool) -> bool {
        match self.value(s, key) {
            None => default,
            Some((v, line, opt)) => match v.get_ref() {
                DeValue::Boolean(b) => *b,
                other => {
                    self.error(
                        line,
                        opt,
                        format!("expected true or false, found {}", type_name(other)),
                    );
                    default
                }
            },
        }
    }

    /// One of a fixed set of names, parsed into its type here, once; or `default`.
    pub fn choice<T: Choice>(&mut self, s: &mut Section, key: &str, default: T) -> T {
        let Some((v, line, opt)) = self.value(s, key) else {
            return default;
        };
        match v.get_ref() {
            DeValue::String(st) => match st.parse::<T>() {
                Ok(c) => c,
                Err(e) => {
                    self.error(line, opt, e.to_string());
                    default
                }
            },
            other => {
                self.error(
                    line,
                    opt,
                    format!(
                        "expected a string (one of: {}), found {}",
                        T::NAMES.join(", "),
                        type_name(other)
                    ),
                );
                default
            }
        }
    }

    /// An absolute path, or `default`.
    pub fn path(&mut self, s: &mut Section, key: &str, default: &str) -> (PathBuf, usize) {
        let (p, line) = self.string(s, key, default);
        if !p.starts_with('/') {
            self.error(
                line,
                Self::option_name(s, key),
                format!("{} must be an absolute path", shown(&p)),
            );
        }
        (PathBuf::from(p), line)
    }

    /// Reports every option of `s` that was not taken. At the top level, the sections asked
    /// for count as taken, and an unknown table is reported as an unknown section naming them.
    pub fn finish(&mut self, mut s: Section) {
        let Some(t) = s.table else { return };
        if s.name.is_empty() {
            s.taken.extend(self.sections.iter().map(|n| n.to_string()));
        }
        for (k, v) in t.iter() {
            if !s.taken.contains(k.get_ref().as_ref()) {
                let line = self.line_of(k.span().start);
                let opt = Self::option_name(&s, k.get_ref());
                let hint = if s.name.is_empty() && matches!(v.get_ref(), DeValue::Table(_)) {
                    let known: Vec<String> =
                        self.sections.iter().map(|n| format!("[{n}]")).collect();
                    format!("unknown section (known: {})", known.join(", "))
                } else {
                    format!(
                        "unknown option (see {} for the options of this section)",
                        self.docs
                    )
                };
                self.error(line, opt, hint);
            }
        }
    }

    /// The warnings, or every error (sorted by line) as [`ConfigError::Invalid`].
    pub fn into_result(mut self) -> Result<Vec<Problem>, ConfigError> {
        if self.errors.is_empty() {
            return Ok(self.warnings);
        }
        self.errors.sort_by_key(|p| p.line);
        Err(ConfigError::Invalid {
            file: self.file,
            problems: self.errors,
        })
    }
}

/// A value from the file, quoted for a message: control characters escaped and cut to a length
/// that fits a line, so a long or hostile value cannot flood or forge the output.
pub fn shown(value: &str) -> String {
    format!("'{}'", cut(value, 60).escape_debug())
}

/// At most `max` characters, with an ellipsis when something was cut.
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]).into(),
        None => text.into(),
    }
}

/// What a value is, for "expected ..., found ..." messages.
pub fn type_name(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    choice! {
        /// A test choice.
        pub enum Colour {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark-blue",
        }
    }

    fn walk(
        text: &str,
        f: impl FnOnce(&mut Walker, &DeTable),
    ) -> Result<Vec<Problem>, ConfigError> {
        let mut w = Walker::new("t.toml", text);
        if let Some(root) = w.parse(text) {
            f(&mut w, &root);
        }
        w.into_result()
    }

    fn errors(r: Result<Vec<Problem>, ConfigError>) -> Vec<String> {
        match r {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_kind_of_problem_is_collected_with_its_line_sorted() {
        let text = "name = 3\n[a]\ncolour = \"green\"\nn = 0x10\nflag = \"yes\"\nextra = 1\n[b]\n[c]\nx = 1\n";
        let e = errors(walk(text, |w, root| {
            let mut top = w.root(root);
            let mut a = w.section(root, "a");
            assert_eq!(w.choice(&mut a, "colour", Colour::Red), Colour::Red);
            assert_eq!(w.int(&mut a, "n", 1, (0, 10), " things").0, 1);
            assert!(!w.boolean(&mut a, "flag", false));
            w.finish(a);
            assert!(w.optional_section(root, "b").is_some());
            assert!(w.optional_section(root, "d").is_none());
            assert_eq!(w.required_string(&mut top, "name", "a name"), None);
            w.warn(1, "name", "ignored: errors win");
            w.finish(top);
        }));
        assert_eq!(
            e,
            [
                "t.toml:1: name: expected a string, found an integer",
                "t.toml:3: a.colour: 'green' is not one of: red, dark-blue",
                "t.toml:4: a.n: 16 is out of range: allowed 0 to 10 things",
                "t.toml:5: a.flag: expected true or false, found a string",
                "t.toml:6: a.extra: unknown option (see the documentation for the options of this section)",
                "t.toml:8: c: unknown section (known: [a], [b], [d])",
            ]
        );
    }

    #[test]
    fn missing_and_relative_values_and_syntax_errors() {
        let e = errors(walk("[s]\ndir = \"rel\"\n", |w, root| {
            let mut s = w.section(root, "s");
            w.path(&mut s, "dir", "/x");
            assert_eq!(w.required_string(&mut s, "host", "the host name"), None);
            w.finish(s);
        }));
        assert_eq!(
            e,
            [
                "t.toml:1: s.host: missing: the host name",
                "t.toml:2: s.dir: 'rel' must be an absolute path",
            ]
        );
        let e = errors(walk("a = \n", |_, _| panic!("no tree")));
        assert!(e[0].starts_with("t.toml:1: TOML syntax error"), "{e:?}");
    }

    #[test]
    fn a_clean_file_gives_its_values_and_warnings() {
        let warnings = walk("[a]\ncolour = \"dark-blue\"\nn = 1_0\n", |w, root| {
            let mut a = w.section(root, "a");
            assert_eq!(w.choice(&mut a, "colour", Colour::Red), Colour::DarkBlue);
            assert_eq!(w.int(&mut a, "n", 1, (0, 10), "").0, 10);
            assert_eq!(w.string(&mut a, "s", "dflt").0, "dflt");
            w.warn(a.line(), "a", "careful");
            w.finish(a);
        })
        .unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].to_string(), "t.toml:1: a: careful");
    }

    #[test]
    fn values_and_reports_are_cut_and_escaped() {
        assert_eq!(shown("a\nb"), r"'a\nb'");
        assert_eq!(shown(&"é".repeat(100)).chars().count(), 63);
        let p: Vec<Problem> = (0..25)
            .map(|i| Problem {
                file: "f".into(),
                line: i,
                option: String::new(),
                message: "m".into(),
            })
            .collect();
        let r = report("f", &p);
        assert!(r.starts_with("25 errors in f:"));
        assert!(r.ends_with("... and 5 more: fix these first"), "{r}");
        assert_eq!(report("f", &p[..1]), "1 error in f:\n  f:0: m");
    }
}
