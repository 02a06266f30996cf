//! `tapwatch-edge`: see the library, `tapwatch_edge`.

fn main() -> std::process::ExitCode {
    tapwatch_edge::cli::main()
}
