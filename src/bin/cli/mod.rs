//! What both binaries' command lines share: an environment variable for every flag,
//! errors in one line a person can act on, and the value parsers whose messages say what
//! is allowed. The flags themselves are defined once each, with clap's derive, in
//! `wsloop/args.rs` and `wsloop-bench/args.rs`.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgMatches, Command};
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

/// Gives every long flag of `cmd` and of its subcommands the environment variable
/// `prefix` + the flag's name in upper case with `_` for `-` (`--jwt-secret-file` is
/// `WSLOOP_JWT_SECRET_FILE`). clap reads a variable only when the flag is absent from
/// the command line, so the command line wins. Values may start with `-` (`--duration
/// -1` is a bad duration, not an unknown flag `-1`).
pub fn with_env(cmd: Command, prefix: &str) -> Command {
    let mut cmd = cmd.mut_args(|a| {
        let Some(long) = a.get_long() else {
            return a;
        };
        let name = format!("{prefix}{}", long.to_ascii_uppercase().replace('-', "_"));
        let takes_value = a.get_action().takes_values();
        let a = if takes_value { a.allow_negative_numbers(true) } else { a };
        // Built once per process at start-up; clap keeps `&'static str` names.
        a.env(&*String::leak(name))
    });
    let subs: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, |s| with_env(s, prefix));
    }
    cmd
}

/// How parsing ended when it did not give a value to run with.
pub enum Exit {
    /// `--help` or `--version`: printed to stdout, exit 0.
    Printed,
    /// A mistake, already printed as one line to stderr: exit 2.
    Usage,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        match e {
            Exit::Printed => ExitCode::SUCCESS,
            Exit::Usage => ExitCode::from(2),
        }
    }
}

/// Parses `argv` (program name first) with `cmd`; prints help, the version, or a
/// one-line error.
pub fn matches(bin: &str, cmd: Command, argv: &[String]) -> Result<ArgMatches, Exit> {
    let prefix = env_prefix(&cmd);
    let cmd_for_errors = cmd.clone();
    cmd.try_get_matches_from(argv).map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            Exit::Printed
        }
        _ => usage_error(bin, &describe(&e, &cmd_for_errors, argv, &prefix)),
    })
}

/// Prints `bin: what; see --help` to stderr.
pub fn usage_error(bin: &str, what: &str) -> Exit {
    eprintln!("{bin}: {what}; see --help");
    Exit::Usage
}

/// The prefix [`with_env`] used, read back from the first flag with a variable.
fn env_prefix(cmd: &Command) -> String {
    cmd.get_arguments()
        .find_map(|a| {
            let var = a.get_env()?.to_str()?;
            let long = a.get_long()?.to_ascii_uppercase().replace('-', "_");
            var.strip_suffix(&long).map(str::to_string)
        })
        .unwrap_or_default()
}

fn context_str(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => Some(v.join(", ")),
        _ => None,
    }
}

fn context_list(e: &clap::Error, kind: ContextKind) -> Vec<String> {
    match e.get(kind) {
        Some(ContextValue::Strings(v)) => v.clone(),
        Some(ContextValue::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// `--workers <N>` -> `--workers`.
fn flag_name(arg: &str) -> &str {
    arg.split([' ', '=']).next().unwrap_or(arg)
}

/// " (from WSLOOP_WORKERS)" when `flag` is not on the command line and its variable is set.
fn env_note(flag: &str, argv: &[String], prefix: &str) -> String {
    let Some(long) = flag.strip_prefix("--") else {
        return String::new();
    };
    let given = argv.iter().skip(1).any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')));
    let var = format!("{prefix}{}", long.to_ascii_uppercase().replace('-', "_"));
    if !given && !prefix.is_empty() && std::env::var_os(&var).is_some() {
        format!(" (from {var})")
    } else {
        String::new()
    }
}

/// One line for a clap error: the flag, the value and what is allowed.
pub fn describe(e: &clap::Error, cmd: &Command, argv: &[String], prefix: &str) -> String {
    let arg = context_str(e, ContextKind::InvalidArg).unwrap_or_default();
    let flag = flag_name(&arg);
    let value = context_str(e, ContextKind::InvalidValue).unwrap_or_default();
    let from = env_note(flag, argv, prefix);
    match e.kind() {
        ErrorKind::InvalidValue if value.is_empty() => format!("{flag}{from} needs a value"),
        ErrorKind::InvalidValue => {
            let allowed = context_list(e, ContextKind::ValidValue);
            format!("invalid value {value:?} for {flag}{from}: expected {}", one_of(&allowed))
        }
        ErrorKind::ValueValidation => {
            let why = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default();
            format!("invalid value {value:?} for {flag}{from}: {why}")
        }
        ErrorKind::UnknownArgument => {
            let suggestion = context_list(e, ContextKind::SuggestedArg);
            if let Some(why) = other_modes_flag(cmd, argv, flag) {
                return why;
            }
            match suggestion.first() {
                Some(s) => format!("unknown flag {arg:?} (did you mean {s}?)"),
                None => format!("unknown flag or extra argument {arg:?}"),
            }
        }
        ErrorKind::InvalidSubcommand => {
            let given = context_str(e, ContextKind::InvalidSubcommand).unwrap_or_default();
            format!("unknown mode {given:?}: expected {}", one_of(&modes(cmd)))
        }
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            format!("no mode given: expected {}", one_of(&modes(cmd)))
        }
        ErrorKind::MissingRequiredArgument => {
            let missing = context_list(e, ContextKind::InvalidArg);
            let what: Vec<String> = missing
                .iter()
                .map(|m| {
                    let name = m.trim_matches(['<', '>']);
                    let allowed = cmd
                        .get_positionals()
                        .find(|a| a.get_value_names().is_some_and(|v| v.iter().any(|v| v.as_str() == name)))
                        .map(|a| a.get_possible_values().iter().map(|v| v.get_name().to_string()).collect::<Vec<_>>())
                        .filter(|v| !v.is_empty());
                    match allowed {
                        Some(v) => format!("{m} ({})", one_of(&v)),
                        None => m.clone(),
                    }
                })
                .collect();
            format!("missing {}", what.join(", "))
        }
        ErrorKind::ArgumentConflict => {
            let prior = context_str(e, ContextKind::PriorArg).unwrap_or_default();
            format!("{flag}{from} cannot be used with {}", flag_name(&prior))
        }
        ErrorKind::NoEquals | ErrorKind::TooManyValues | ErrorKind::WrongNumberOfValues => {
            format!("{flag}{from}: wrong number of values")
        }
        _ => {
            // Anything else: clap's own first line without its "error: " label.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        }
    }
}

/// The subcommands' names.
fn modes(cmd: &Command) -> Vec<String> {
    cmd.get_subcommands().map(|s| s.get_name().to_string()).collect()
}

/// "--hold does not apply to echo mode (only to idle)" when `flag` belongs to other
/// subcommands than the one on the command line.
fn other_modes_flag(cmd: &Command, argv: &[String], flag: &str) -> Option<String> {
    let long = flag.strip_prefix("--")?;
    let mode = argv.iter().skip(1).find_map(|a| cmd.find_subcommand(a))?;
    let others: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != mode.get_name() && s.get_arguments().any(|a| a.get_long() == Some(long)))
        .map(|s| s.get_name().to_string())
        .collect();
    (!others.is_empty())
        .then(|| format!("{flag} does not apply to {} mode (only to {})", mode.get_name(), one_of(&others)))
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(items: &[String]) -> String {
    match items {
        [] => "something else".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// A duration given in (possibly fractional) seconds, shown as seconds in `--help`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Secs(pub Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// Seconds in `(0, max]`, or `[0, max]` when `zero_ok`; fractions allowed.
pub fn secs(zero_ok: bool, max: f64) -> impl Fn(&str) -> Result<Secs, String> + Clone + Send + Sync + 'static {
    move |v: &str| {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && (*s > 0.0 || (zero_ok && *s == 0.0)) && *s <= max)
            .map(|s| Secs(Duration::from_secs_f64(s)))
            .ok_or_else(|| {
                format!("expected seconds in {}0, {max}] (fractions allowed)", if zero_ok { "[" } else { "(" })
            })
    }
}

/// A whole number in `min..=max`.
pub fn count(min: usize, max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |v: &str| {
        v.parse::<usize>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| format!("expected a whole number from {min} to {max}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_as_prose() {
        let s = |v: &[&str]| one_of(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["a"]), "a");
        assert_eq!(s(&["a", "b"]), "a or b");
        assert_eq!(s(&["a", "b", "c"]), "a, b or c");
    }

    #[test]
    fn seconds_and_counts_say_what_is_allowed() {
        assert_eq!(secs(false, 10.0)("0.5"), Ok(Secs(Duration::from_millis(500))));
        assert_eq!(secs(false, 10.0)("0").unwrap_err(), "expected seconds in (0, 10] (fractions allowed)");
        assert_eq!(secs(true, 10.0)("0"), Ok(Secs(Duration::ZERO)));
        assert!(secs(true, 10.0)("11").is_err());
        assert!(secs(true, 10.0)("NaN").is_err());
        assert_eq!(count(1, 9)("9"), Ok(9));
        assert_eq!(count(1, 9)("0").unwrap_err(), "expected a whole number from 1 to 9");
        assert_eq!(Secs(Duration::from_millis(1500)).to_string(), "1.5");
        assert_eq!(Secs(Duration::from_secs(30)).to_string(), "30");
    }
}
