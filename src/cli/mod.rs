//! The command line (SPEC §9): `serve`, `token create|list|show|update|rotate|delete`,
//! `rules check|suggest`, `audit` and `migrate`. Exit codes: 0 success, 1
//! failure, 2 usage or configuration error. [`args`] says what each command
//! takes; [`commands`] runs the one-shot ones; `serve` and `migrate` are
//! here.

mod args;
mod commands;

use std::path::Path;
use std::process::ExitCode;

use crate::app::{App, StartError, open_token_service};
use crate::config::{self, Config, LogFormat, Overrides};
use crate::tokens::TokenManager;
pub use args::Cli;
use args::{Command, MigrateArgs, RulesCommand, ServeArgs, StoreArgs, TokenCommand};

/// A command's failure, and the exit code it maps to.
#[derive(Debug)]
enum Failure {
    /// Exit 2.
    Usage(String),
    /// Exit 1.
    Failed(String),
    /// Exit 1, the answer already printed (a dry run that denies).
    Denied,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Failed(e.to_string())
    }
}

/// Runs a parsed command line to completion.
pub fn main(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        // The configuration first: it says how many threads to serve with.
        Command::Serve(args) => serve_config(&args).and_then(|config| {
            let runtime = runtime(config.workers)?;
            runtime.block_on(serve(config))
        }),
        command => runtime(1).and_then(|runtime| runtime.block_on(run(command))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("tokengate: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("tokengate: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Denied) => ExitCode::FAILURE,
    }
}

/// The runtime: with one worker, tokio's current-thread scheduler, which
/// runs a connection and its upstream request with no hand-over between
/// threads (measured in benches/load.sh); with more, the work-stealing one.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the runtime: {e}")))
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(_) => unreachable!("serve builds its own runtime"),
        Command::Token(TokenCommand::Create(args)) => commands::create(args).await,
        Command::Token(TokenCommand::List(args)) => commands::list(args).await,
        Command::Token(TokenCommand::Show(args)) => commands::show(args).await,
        Command::Token(TokenCommand::Update(args)) => commands::update(args).await,
        Command::Token(TokenCommand::Rotate(args)) => commands::rotate(args).await,
        Command::Token(TokenCommand::Delete(args)) => commands::delete(args).await,
        Command::Rules(RulesCommand::Check(args)) => commands::rules_check(args),
        Command::Rules(RulesCommand::Suggest(args)) => commands::rules_suggest(args).await,
        Command::Audit(args) => commands::audit(args).await,
        Command::Migrate(MigrateArgs { store, json }) => {
            let config = load_config(&store, Overrides::default(), "off")?;
            crate::store::open(&config.database_url).await?.close().await;
            if json {
                println!("{}", serde_json::json!({"status": "ok"}));
            } else {
                println!("migrations applied");
            }
            Ok(())
        }
    }
}

/// The configuration, and logging as it says. `serve` logs at `info`; a
/// one-shot command logs nothing (SPEC §9: stdout carries its result,
/// stderr only what is meant for the person), unless `RUST_LOG` asks.
fn load_config(args: &StoreArgs, mut overrides: Overrides, default_log: &str) -> Result<Config, Failure> {
    overrides.database = args.database.clone();
    let config = config::load(args.config.as_deref(), std::env::vars(), &overrides)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    init_tracing(config.log_format, default_log);
    Ok(config)
}

/// Whether a one-shot command may create the store: only the ones that
/// write a token do. The others, on a SQLite file that is not there, say
/// where they looked instead of reading an empty store they made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Create,
    Existing,
}

/// The token service over the configured store, for a one-shot command.
async fn open(args: &StoreArgs, store: Store) -> Result<TokenManager, Failure> {
    Ok(open_naming(args, store).await?.0)
}

/// ... and the store's URL (without a password), to name it.
async fn open_naming(args: &StoreArgs, store: Store) -> Result<(TokenManager, String), Failure> {
    let config = load_config(args, Overrides::default(), "off")?;
    let missing = config::sqlite_path(&config.database_url).filter(|path| !Path::new(path).exists());
    if let (Store::Existing, Some(path)) = (store, missing) {
        return Err(Failure::Failed(format!(
            "no token store at {path}: TOKENGATE_HOME, --config or --database say where the gateway's store is \
             (`tokengate migrate` creates an empty one)"
        )));
    }
    let tokens = open_token_service(&config).await?;
    Ok((tokens, config::redact_password(&config.database_url)))
}

/// Logs go to stderr; the level comes from `RUST_LOG`, else `default`.
fn init_tracing(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: journald and container logs want plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn serve_config(args: &ServeArgs) -> Result<Config, Failure> {
    let overrides = Overrides {
        listen: args.listen.clone(),
        upstream: args.upstream.clone(),
        database: None,
    };
    load_config(&args.store, overrides, "info")
}

async fn serve(config: Config) -> Result<(), Failure> {
    let listen = config.listen;
    let app = App::open_for_serving(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen { addr: listen, source })?;
    crate::server::run(listener, app, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM. The handlers are installed at once,
/// before the gateway says it is serving: a signal from then on is a
/// graceful shutdown, never the default exit that loses what is pending.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    tracing::warn!("cannot listen for SIGINT and SIGTERM; stop the gateway with Ctrl-C");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
