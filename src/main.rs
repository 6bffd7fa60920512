//! The `ordersaga` binary: parse the command line, set up logging, start the application and
//! report failures as one readable sentence (no stack trace) with what to do about them.

use clap::Parser;

use ordersaga::configuration::{Cli, Command, LogFormat};
use ordersaga::startup::Application;
use ordersaga::telemetry;

// Many small, short-lived allocations cross threads (messages, JSON, futures), which glibc's
// allocator handles poorly under load; mimalloc is built for exactly this.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    ordersaga::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(settings) => {
            telemetry::init(settings.log_format);
            let app = match Application::build(*settings).await {
                Ok(app) => app,
                Err(e) => {
                    eprintln!("ordersaga could not start: {e}");
                    if let Some(hint) = e.hint() {
                        eprintln!("\n{hint}");
                    }
                    return std::process::ExitCode::FAILURE;
                }
            };
            eprintln!("ordersaga listening on http://{}", app.address());
            match app.run_until_stopped().await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ordersaga stopped: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::StripeFake(fake) => {
            telemetry::init(LogFormat::Json);
            let config = stripe_fake::FakeConfig {
                webhook_url: fake.webhook_url,
                webhook_secret: fake.webhook_secret,
                ..Default::default()
            };
            match stripe_fake::StripeFake::start(fake.addr, config).await {
                Ok(mut server) => {
                    eprintln!("Stripe fake listening on {}", server.base_url());
                    server.wait().await;
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("the Stripe fake could not listen on {}: {e}", fake.addr);
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
