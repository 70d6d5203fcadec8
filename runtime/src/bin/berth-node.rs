//! berth-node (being written).
fn main() {}
