use clap::Parser;

/// Turn rooted Android phones into k3s workers.
#[derive(Parser)]
#[command(name = "phonectl", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
