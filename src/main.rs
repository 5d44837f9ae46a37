//! The `tokengate` binary. The command line lives in `cli`, a module of the binary rather than
//! of the library: nothing else links against it.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
