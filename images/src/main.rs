use clap::Parser;

/// Build and flash Raspberry Pi images that boot into the k3s agent.
#[derive(Parser)]
#[command(name = "imagegen", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
