//! The fault suite: real service processes, real infrastructure restarted under them, and a check
//! that nothing was lost, double-sold or double-charged. `cargo run -p fault-suite` prints the table
//! of scenarios; `cargo run -p fault-suite -- --chaos SEED --minutes N` runs the seeded chaos run.

pub mod chaos;
pub mod check;
pub mod degradation;
pub mod flow;
pub mod inject;
pub mod invariants;
pub mod stack;
