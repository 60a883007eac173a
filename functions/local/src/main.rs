//! `local`: the whole system in one process for development (`make dev`). SKELETON STUB.

fn main() {}
