use clap::Parser;

fn main() {
    bst::interrupt::install();
    let cli = bst::cli::Cli::parse();
    let code = match bst::run(cli) {
        Ok(()) => bst::error::code::OK,
        Err(e) => {
            let code = bst::error::exit_code_of(&e);
            // A closed pipe (`bst list | head`) is not a failure worth a message.
            if !e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) {
                eprintln!("error: {e:#}");
            }
            if bst::interrupt::seen() {
                bst::error::code::INTERRUPTED
            } else {
                code
            }
        }
    };
    std::process::exit(code);
}
