use clap::{CommandFactory, FromArgMatches};

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
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = bst::complete::helper(&args) {
        std::process::exit(code);
    }
    let cli = match parse(&args) {
        Ok(cli) => cli,
        Err(e) => std::process::exit(parse_failed(&args, e)),
    };
    std::process::exit(bst::run(cli));
}

/// clap needs `--color` and `--json` before it has parsed them: its own errors and help obey
/// them too.
fn parse(args: &[std::ffi::OsString]) -> Result<bst::cli::Cli, clap::Error> {
    let color = if json_requested(args) { clap::ColorChoice::Never } else { color_requested(args) };
    let matches = bst::cli::Cli::command().color(color).try_get_matches_from(args)?;
    bst::cli::Cli::from_arg_matches(&matches)
}

fn json_requested(args: &[std::ffi::OsString]) -> bool {
    args.iter().skip(1).any(|a| a == "--json")
}

fn color_requested(args: &[std::ffi::OsString]) -> clap::ColorChoice {
    let mut choice = clap::ColorChoice::Auto;
    let mut it = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        let value = match a.strip_prefix("--color=") {
            Some(v) => Some(v.to_string()),
            None if a == "--color" => it.next().map(|v| v.into_owned()),
            None => None,
        };
        if let Some(c) = value.and_then(|v| bst::cli::parse_color(&v).ok()) {
            choice = c;
        }
    }
    choice
}

/// clap's message on stderr as clap prints it; with `--json`, also the error document.
fn parse_failed(args: &[std::ffi::OsString], e: clap::Error) -> i32 {
    let code = e.exit_code();
    let _ = e.print();
    // --help and --version are "errors" that exit 0; they are not failures.
    if code != 0 && json_requested(args) {
        // clap's text without its `error: ` and usage paragraphs: the problem and its tip.
        let text = e.render().to_string();
        let first = text.split("\n\n").next().unwrap_or_default();
        let mut message = first.trim().strip_prefix("error: ").unwrap_or(first.trim()).to_string();
        if let Some(tip) = text.split("\n\n").find(|p| p.trim_start().starts_with("tip:")) {
            message.push_str(&format!(" ({})", tip.trim()));
        }
        println!("{}", serde_json::to_string_pretty(&bst::report::error_doc("usage", &message, code)).unwrap_or_default());
    }
    code
}
