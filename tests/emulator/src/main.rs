//! `deckhand-emulator`: runs the OAuth2 provider emulator on 127.0.0.1 until Ctrl-C.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use deckhand_emulator::{
    AccessTokenFormat, Emulator, EmulatorConfig, ExpiresInFormat, OAuthClient, RefreshRotation,
};

/// Local OAuth2 provider + Salesforce/Graph-like APIs for trying Deckhand connectors offline.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Access token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime_secs: u64,
    /// Client id accepted by the token endpoints.
    #[arg(long, default_value = "deckhand-test-client")]
    client_id: String,
    /// Client secret accepted by the token endpoints.
    #[arg(long, default_value = "deckhand-test-secret")]
    client_secret: String,
    /// How the Microsoft-style endpoint reports expires_in.
    #[arg(long, value_enum, default_value_t = ExpiresIn::Number)]
    expires_in: ExpiresIn,
    /// Refresh token rotation on the Salesforce-style endpoint.
    #[arg(long, value_enum, default_value_t = Rotation::Strict)]
    salesforce_rotation: Rotation,
    /// Refresh token rotation on the Microsoft-style endpoint.
    #[arg(long, value_enum, default_value_t = Rotation::Strict)]
    graph_rotation: Rotation,
    /// Issue JWTs instead of opaque session ids on the Salesforce-style endpoint.
    #[arg(long)]
    salesforce_jwt: bool,
    /// Records per Salesforce query page.
    #[arg(long, default_value_t = 2000)]
    salesforce_page_size: usize,
    /// Reuse window of a used refresh token under `--*-rotation grace`, in seconds.
    #[arg(long, default_value_t = 30)]
    grace_window_secs: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExpiresIn {
    Number,
    String,
    Omitted,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Rotation {
    Strict,
    Lenient,
    Off,
    /// Single-use with a reuse grace window (`--grace-window-secs`).
    Grace,
}

impl Rotation {
    fn with_window(self, window: Duration) -> RefreshRotation {
        match self {
            Rotation::Strict => RefreshRotation::Strict,
            Rotation::Lenient => RefreshRotation::Lenient,
            Rotation::Off => RefreshRotation::Off,
            Rotation::Grace => RefreshRotation::Grace { window },
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = EmulatorConfig {
        clients: vec![OAuthClient::new(&args.client_id, &args.client_secret)],
        token_lifetime: Duration::from_secs(args.token_lifetime_secs),
        expires_in_format: match args.expires_in {
            ExpiresIn::Number => ExpiresInFormat::Number,
            ExpiresIn::String => ExpiresInFormat::String,
            ExpiresIn::Omitted => ExpiresInFormat::Omitted,
        },
        salesforce_refresh_rotation: args
            .salesforce_rotation
            .with_window(Duration::from_secs(args.grace_window_secs)),
        graph_refresh_rotation: args
            .graph_rotation
            .with_window(Duration::from_secs(args.grace_window_secs)),
        salesforce_access_token_format: if args.salesforce_jwt {
            AccessTokenFormat::Jwt
        } else {
            AccessTokenFormat::Opaque
        },
        salesforce_page_size: args.salesforce_page_size,
        ..EmulatorConfig::default()
    };
    let emulator = match Emulator::start(config).await {
        Ok(emulator) => emulator,
        Err(error) => {
            eprintln!("deckhand-emulator: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let refresh_token = emulator.issue_refresh_token(&args.client_id);
    println!("base_url:              {}", emulator.base_url());
    println!("client_id:             {}", args.client_id);
    println!("client_secret:         {}", args.client_secret);
    println!("refresh_token:         {refresh_token}");
    println!("microsoft_token_url:   {}", emulator.microsoft_token_url());
    println!("graph_url:             {}", emulator.graph_url());
    println!("salesforce_token_url:  {}", emulator.salesforce_token_url());
    println!("salesforce_data_url:   {}", emulator.salesforce_data_url());
    println!("Press Ctrl-C to stop.");

    if let Err(error) = tokio::signal::ctrl_c().await {
        eprintln!("deckhand-emulator: cannot wait for Ctrl-C: {error}");
    }
    emulator.shutdown().await;
    ExitCode::SUCCESS
}
