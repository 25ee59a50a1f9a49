//! The `loadgen` binary: everything is in the library (see `lib.rs`).

fn main() -> std::process::ExitCode {
    loadgen::main_entry()
}
