use clap::Parser;

fn main() {
    // glibc gives every thread that allocates its own arena, and freed 1 MiB upload blocks
    // stay in them: 19 MiB of peak RSS on a 50,000-file upload. Two arenas are plenty for
    // a short-lived CLI.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
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
