//! `reasonrec`: one binary, one subcommand per role. All logic lives in the library.

fn main() -> std::process::ExitCode {
    reasonrec_cli::main()
}
