fn main() -> std::process::ExitCode {
    keel_local::cli::main()
}
