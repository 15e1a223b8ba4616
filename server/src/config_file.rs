//! `--config FILE` (or `TAGCAST_CONFIG`): serve options from a TOML or YAML file whose keys are
//! the flags' names (`port`, `max-connections`, ...). Each value becomes its option's
//! `TAGCAST_*` variable unless that variable is set, so flags win over variables, which win
//! over the file. An unknown key is an error naming it and the file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// What is wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("{path}: cannot read the config file: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Not valid TOML or YAML, or not a table of options.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// Where options came from a config file: the file, and the keys whose values it gave (a
/// flag or variable set for the same option wins over the file).
#[derive(Debug, Clone, Default)]
pub struct FromFile {
    /// The config file.
    pub path: PathBuf,
    /// The keys whose values were taken from it.
    pub keys: Vec<String>,
}

impl FromFile {
    /// The key of the file whose value clap refused, from the argument clap names
    /// (`--port <PORT>`), unless `args` give that option as a flag.
    pub fn key_for(&self, invalid_arg: &str, args: &[OsString]) -> Option<&str> {
        let flag = invalid_arg.split_whitespace().next()?;
        let key = self.keys.iter().find(|k| flag == format!("--{k}"))?;
        let given = args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
        });
        (!given).then_some(key.as_str())
    }
}

/// The commands whose options a config file holds.
const COMMANDS: [&str; 2] = ["serve", "check-config"];

/// Reads the config file named by `args` (or `TAGCAST_CONFIG`), if the command takes one, and
/// sets the variables of the options it holds; says which it set.
pub fn apply(args: Vec<OsString>) -> Result<Option<FromFile>, ConfigFileError> {
    let Some(command) = args.get(1).and_then(|a| a.to_str()) else {
        return Ok(None);
    };
    if !COMMANDS.contains(&command) {
        return Ok(None);
    }
    let Some(path) = config_path(&args[2..]) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|error| ConfigFileError::Read {
        path: path.clone(),
        error,
    })?;
    let invalid = |problem: String| ConfigFileError::Invalid {
        path: path.clone(),
        problem,
    };
    let options = parse(&path, &text).map_err(invalid)?;
    let known = known_options();
    let mut from_file = FromFile {
        path: path.clone(),
        keys: Vec::new(),
    };
    for (key, value) in options {
        let Some((_, env)) = known.iter().find(|(long, _)| *long == key) else {
            let names: Vec<&str> = known.iter().map(|(long, _)| long.as_str()).collect();
            return Err(invalid(format!(
                "unknown key '{key}' (the keys are serve's options: {})",
                names.join(", ")
            )));
        };
        if std::env::var_os(env).is_none() {
            // Before any thread starts: main calls this first.
            std::env::set_var(env, value);
            from_file.keys.push(key);
        }
    }
    Ok(Some(from_file))
}

/// `--config FILE` or `--config=FILE` in the arguments, else `TAGCAST_CONFIG`.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let arg = arg.to_str().unwrap_or_default();
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("TAGCAST_CONFIG").map(PathBuf::from)
}

/// The long names of serve's options and their variables (`--config` itself excluded).
fn known_options() -> Vec<(String, String)> {
    let cli = crate::Cli::command();
    let Some(serve) = cli.find_subcommand("serve") else {
        return Vec::new();
    };
    serve
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let env = arg.get_env()?.to_str()?;
            (long != "config").then(|| (long.to_owned(), env.to_owned()))
        })
        .collect()
}

/// The file's options as text values: TOML for `.toml`, YAML otherwise.
fn parse(path: &Path, text: &str) -> Result<Vec<(String, String)>, String> {
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let value: serde_json::Value = if is_toml {
        toml::from_str(text).map_err(|e| format!("not valid TOML: {e}"))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?
    };
    let map = match value {
        serde_json::Value::Object(map) => map,
        serde_json::Value::Null => return Ok(Vec::new()),
        _ => return Err("the file must hold a table of options (key = value)".into()),
    };
    map.into_iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => return Err(format!("'{key}' must be a string, a number or a boolean")),
            };
            Ok((key, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_yaml_give_the_same_options() {
        let toml = parse(
            Path::new("a.toml"),
            "port = 9000\nauthorize-open = false\nredis = \"redis://h\"\n",
        )
        .unwrap();
        let yaml = parse(
            Path::new("a.yml"),
            "port: 9000\nauthorize-open: false\nredis: redis://h\n",
        )
        .unwrap();
        let mut toml = toml;
        let mut yaml = yaml;
        toml.sort();
        yaml.sort();
        assert_eq!(toml, yaml);
        assert!(toml.contains(&("port".into(), "9000".into())));
        assert!(parse(Path::new("a.yml"), "port: [1]").is_err());
        assert!(parse(Path::new("a.toml"), "port = ").is_err());
    }

    #[test]
    fn every_serve_option_is_a_key() {
        let known = known_options();
        for key in [
            "port",
            "max-connections",
            "history-ttl",
            "api-key",
            "static",
            "tls-cert",
        ] {
            assert!(known.iter().any(|(long, _)| long == key), "{key}");
        }
        assert!(known
            .iter()
            .any(|(long, env)| long == "static" && env == "TAGCAST_STATIC"));
        assert!(!known.iter().any(|(long, _)| long == "config"));
    }
}
