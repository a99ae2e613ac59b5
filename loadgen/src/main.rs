//! The `loadgen` binary; see the library documentation.

fn main() {
    std::process::exit(loadgen::cli::main());
}
