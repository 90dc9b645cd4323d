//! `eerag-host`: the only program an operator needs on the untrusted host.
//! It serves the API and runs the operator's jobs; it has no key, no
//! tokenizer and no client code (docs/design.md, "The plaintext boundary").

use anyhow::Result;
use clap::{Parser, Subcommand};
use eerag_host::cli::{self, jobs, serve};

#[derive(Parser)]
#[command(
    name = "eerag-host",
    version,
    about = "The eerag host: serves encrypted search and answers; never holds a key or a tokenizer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: the REST API over the store (embedded, or a Qdrant
    /// server with --store) and the transformed models.
    Serve(serve::ServeArgs),
    /// Copy collections between stores (embedded ↔ Qdrant server), chunk
    /// for chunk, resumable, verified.
    Migrate(jobs::MigrateArgs),
    /// Re-embed a collection with another encoder the host serves, through
    /// its API, then switch to the new version.
    ReEmbed(jobs::ReembedArgs),
    /// Print the SHA-256 of an API token, for the server's `[[api_keys]]`.
    HashToken {
        /// The bearer token clients will send.
        token: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli::init_logging(match cli.command {
        Command::Serve(_) => cli::SERVE_LOG_FILTER,
        _ => cli::QUIET_LOG_FILTER,
    });
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Migrate(args) => jobs::migrate(&args),
        Command::ReEmbed(args) => jobs::reembed(&args),
        Command::HashToken { token } => {
            println!("{}", eerag_host::auth::hash_token(&token));
            Ok(())
        }
    }
}
