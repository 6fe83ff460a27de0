//! The fault suite: real service processes, real infrastructure restarted under them, and a check
//! that nothing was lost, double-sold or double-charged. `cargo run -p fault-suite` prints the table.

pub mod check;
pub mod degradation;
pub mod flow;
pub mod stack;
