//! Placeholder; the pick benchmark is being written.
fn main() {}
