//! Settings from an optional TOML file plus `LAPSEGUARD_*` environment variables, the
//! same rules as every lapseguard binary (`lapseguard_core::config`, repeated here so the
//! agent does not pull the backend's dependencies): keys are flat, the file key
//! `spool_dir` is the variable `LAPSEGUARD_SPOOL_DIR`; environment wins over the file, the
//! file over the defaults. Command-line flags win over all of them (applied in `main`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Environment variable naming the configuration file (the `--config` flag wins).
pub const CONFIG_FILE_ENV: &str = "LAPSEGUARD_CONFIG";

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(#[from] config::ConfigError);

/// Loads `T` from defaults, then `file` (or `$LAPSEGUARD_CONFIG`), then the environment.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, ConfigError> {
    let file: Option<PathBuf> = file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from));
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).required(true));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("LAPSEGUARD")
            .prefix_separator("_")
            .try_parsing(true),
    );
    Ok(builder.build()?.try_deserialize()?)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable otherwise.
    #[default]
    Auto,
    Json,
    Pretty,
}
