//! Placeholder until the k3s stand-in lands (node-runtime issue).
fn main() {}
