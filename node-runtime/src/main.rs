use clap::Parser;

/// The armfleet worker supervisor.
#[derive(Parser)]
#[command(name = "node-runtime", version = node_runtime::VERSION)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
