//! Logging set-up shared by every Weir binary.

use crate::error::{ApiError, ApiResult};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format, chosen per binary by a flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` wins over
/// `default_filter`.
pub fn init(default_filter: &str, format: LogFormat) -> ApiResult<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .map_err(|e| ApiError::LogFilter(Box::new(e)))?;
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    installed.map_err(|e| ApiError::LogFilter(Box::new(e)))
}
