//! `tapwatch-hub`: see the library, `tapwatch_hub`.

fn main() -> std::process::ExitCode {
    tapwatch_hub::cli::main()
}
