fn main() -> std::process::ExitCode {
    p11kms::cli::main()
}
